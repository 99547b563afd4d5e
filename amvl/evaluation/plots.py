"""The report's figures, each a function from loaded results to a PNG file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_TERMS = ["loss", "ntp", "kl_forward", "kl_reverse", "kl_joint", "sigma_prior", "sigma_posterior"]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_bars(accuracy: dict[str, dict[str, tuple[float, float]]], chance: dict[str, float], path: Path) -> None:
    """accuracy: method -> subtask -> (mean, std) in %; a grouped bar per subtask, chance as a tick."""
    tasks = sorted(chance)
    width = 0.8 / max(1, len(accuracy))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks)), 3.6))
    for i, (method, per_task) in enumerate(accuracy.items()):
        xs = [t + i * width - 0.4 + width / 2 for t in range(len(tasks))]
        means = [per_task.get(task, (0, 0))[0] for task in tasks]
        stds = [per_task.get(task, (0, 0))[1] for task in tasks]
        ax.bar(xs, means, width, yerr=stds, label=method, capsize=2)
    ax.scatter(range(len(tasks)), [100 * chance[t] for t in tasks], marker="_", s=900, color="black", label="chance")
    ax.set_xticks(range(len(tasks)), [t.replace("_", "\n") for t in tasks], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=len(accuracy) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    save(fig, path)


def training_curves(logs: dict[str, list[dict]], path: Path) -> None:
    """One panel per logged term, one line per run; KLs on a log scale."""
    terms = [t for t in LOSS_TERMS if any(t in r for log in logs.values() for r in log)]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.3 * len(terms), 3), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for run, log in logs.items():
            points = [(r["step"], r[term]) for r in log if term in r]
            if points:
                ax.plot(*zip(*points), label=run, lw=1)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step")
        if term.startswith("kl"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    save(fig, path)


def schedules(logs: dict[str, list[dict]], path: Path) -> None:
    """beta and gamma over training, as each run logged them."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    for ax, weight in zip(axes, ("beta", "gamma")):
        for run, log in logs.items():
            if any(r.get(weight) for r in log):
                ax.plot([r["step"] for r in log], [r[weight] for r in log], label=run, lw=1)
        ax.set_title(f"{weight}(t)", fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    save(fig, path)


def slot_similarity(matrices: dict[str, list[list[float]]], path: Path) -> None:
    """k x k cosine similarity of prior means, one heatmap per latent run."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(2.6 * len(matrices), 2.6), squeeze=False)
    for ax, (run, matrix) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("slot")
        ax.set_ylabel("slot")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def modality_sensitivity(sensitivity: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Relative change of each slot's prior mean when the image vs the text is perturbed."""
    fig, axes = plt.subplots(1, len(sensitivity), figsize=(2.8 * len(sensitivity), 2.6), squeeze=False)
    for ax, (run, parts) in zip(axes[0], sensitivity.items()):
        slots = range(len(parts["image"]))
        ax.bar([s - 0.2 for s in slots], parts["image"], 0.4, label="image")
        ax.bar([s + 0.2 for s in slots], parts["text"], 0.4, label="text")
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("slot")
    axes[0][0].set_ylabel("|change| / |prior mean|")
    axes[0][0].legend(fontsize=7)
    save(fig, path)


def toy_theory(curve: dict, path: Path) -> None:
    """amvl.theory.leakage_curve: leakage and contamination fall as gamma grows."""
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    ax.plot(curve["gamma"], curve["leakage_coefficient"], marker="o", label="leakage coefficient a*")
    ax.plot(curve["gamma"], curve["contamination"], marker="s", label="contamination KL(q||p*)")
    ax.set_xlabel("gamma (reverse-KL weight)")
    ax.legend(fontsize=7)
    save(fig, path)
