"""report: reports/report.md with the accuracy table and training curves of every run.

Every number comes from results/<run>/metrics.json or runs/<run>/train_log.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from amvl.io import atomic_dir

LOSS_TERMS = ["loss", "ntp", "kl_forward", "kl_reverse", "kl_joint"]


def load_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def plot_training(logs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [t for t in LOSS_TERMS if any(t in r for log in logs.values() for r in log)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for run, log in logs.items():
            points = [(r["step"], r[term]) for r in log if term in r]
            if points:
                ax.plot(*zip(*points), label=run)
        ax.set_title(term)
        ax.set_xlabel("step")
        if term.startswith("kl"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_markdown(metrics: dict[str, dict]) -> str:
    tasks = sorted({t for m in metrics.values() for t in m["per_task"]})
    header = "| run | " + " | ".join(t.replace("_", " ") for t in tasks) + " | macro | micro |"
    lines = [header, "|---|" + "---:|" * (len(tasks) + 2)]
    for run, m in metrics.items():
        cells = [f"{100 * m['per_task'][t]:.1f}" if t in m["per_task"] else "" for t in tasks]
        lines.append(
            f"| {run} | "
            + " | ".join(cells)
            + f" | {100 * m['macro_accuracy']:.1f} | {100 * m['micro_accuracy']:.1f} |"
        )
    chance = {t: c for m in metrics.values() for t, c in m["chance"].items()}
    chance_macro = sum(chance[t] for t in tasks) / len(tasks)
    lines.append(
        "| *chance* | " + " | ".join(f"{100 * chance[t]:.1f}" for t in tasks) + f" | {100 * chance_macro:.1f} | |"
    )
    return "\n".join(lines)


def run(cfg: dict, metrics_paths: list[Path], summary_paths: list[Path], out_dir: Path) -> None:
    metrics = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in metrics_paths}
    summaries = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in summary_paths}
    logs = {Path(p).parent.name: load_log(Path(p).parent / "train_log.jsonl") for p in summary_paths}
    with atomic_dir(out_dir) as folder:
        plot_training(logs, folder / "training_curves.png")
        runs_table = "\n".join(
            f"| {run} | {s['objective']} | {s['steps']} | {s['final'].get('ntp', float('nan')):.3f} |"
            for run, s in summaries.items()
        )
        (folder / "report.md").write_text(
            "# amvl report\n\n"
            "## Accuracy (%), latents from the prior\n\n"
            "Split and temperature: "
            + ", ".join(f"{run}: {m['split']}, tau {m['tau']}" for run, m in metrics.items())
            + ". BLINK's official score is the macro mean of subtask accuracies.\n\n"
            + accuracy_markdown(metrics)
            + "\n\n## Training\n\n| run | objective | steps | final L_ntp |\n|---|---|---:|---:|\n"
            + runs_table
            + "\n\n![training curves](training_curves.png)\n"
        )
