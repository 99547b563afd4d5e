"""The report's figures: each function builds a matplotlib Figure from loaded results, `save` writes it.

Returning the Figure (rather than a PNG) lets tests inspect its lines. Every figure colours runs
from one mapping, `run_styles`, so a run has the same colour everywhere: seeds of one method
(runs named `<method>_s<seed>`) share the method's colour and differ in line style.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import transforms  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# panel -> (title, y label: the quantity and its unit); losses in nats (natural-log cross-entropy).
LOSS_TERMS = {
    "loss": ("training loss", "L_ntp + weighted KLs (nats)"),
    "ntp": ("next-token loss", "L_ntp (nats/token)"),
    "kl_forward": ("forward KL (x beta)", "KL(sg[q] || p) (nats)"),
    "kl_reverse": ("reverse KL (x gamma)", "KL(sg[p] || q) (nats)"),
    "kl_joint": ("joint KL (x beta)", "KL(q || p) (nats)"),
    "sigma_prior": ("prior spread", "mean std of p (latent units)"),
    "sigma_posterior": ("posterior spread", "mean std of q (latent units)"),
    # Is Z used? (train.z_probe_every) How much the answer loss rises when Z is replaced; 0: ignored.
    "z_gain": ("Z use: Z zeroed", "L_ntp(Z=0) - L_ntp(Z) (nats/token)"),
    "z_gain_shuffled": ("Z use: Z from another question", "L_ntp(shuffled Z) - L_ntp(Z) (nats/token)"),
    "z_gain_prior": ("Z use at test time: the prior's Z", "L_ntp(Z=0) - L_ntp(prior's Z) (nats/token)"),
}
# Every run logs both weights; a weight is a run's term only if the run logs a KL it multiplies.
WEIGHTED_KLS = {"beta": ("kl_forward", "kl_joint"), "gamma": ("kl_reverse",)}
SEED_LINESTYLES = ["-", "--", ":", "-."]
PAGE_WIDTH = 12  # inches at dpi 100: the report's HTML page is 1200px wide, wider figures shrink their text
SCHEDULE_LW = 2.0  # points; also how far apart runs that share a schedule are drawn


def method_and_seed(run: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(.+)_s(\d+)", run)
    return (match[1], int(match[2])) if match else (run, None)


def run_styles(runs) -> dict[str, dict]:
    """run -> {color, linestyle}: a colour per method in order of appearance, a line style per seed."""
    methods = list(dict.fromkeys(method_and_seed(run)[0] for run in runs))
    seeds = sorted({seed for run in runs if (seed := method_and_seed(run)[1]) is not None})
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    styles = {}
    for run in runs:
        method, seed = method_and_seed(run)
        style = SEED_LINESTYLES[seeds.index(seed) % len(SEED_LINESTYLES)] if seed is not None else "-"
        styles[run] = {"color": palette[methods.index(method) % len(palette)], "linestyle": style}
    return styles


def style_legend(where, styles: dict[str, dict], runs, **kwargs) -> None:
    """One legend for every panel: a colour per method, then (if there are seeds) a line style per seed."""
    handles = {}
    for run in runs:
        handles.setdefault(method_and_seed(run)[0], Line2D([], [], color=styles[run]["color"], lw=2))
    seeds = {seed: styles[run]["linestyle"] for run in runs if (seed := method_and_seed(run)[1]) is not None}
    for seed in sorted(seeds):
        handles[f"seed {seed}"] = Line2D([], [], color="0.3", linestyle=seeds[seed])
    where.legend(handles.values(), handles.keys(), fontsize=9, frameon=False, **kwargs)


def wrapped(run: str, width: int = 20) -> str:
    """A run name broken at underscores, so neighbouring panel titles don't run into each other."""
    return textwrap.fill(run.replace("_", "_ "), width).replace("_ ", "_")


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_bars(accuracy: dict[str, dict[str, tuple[float, float]]], chance: dict[str, float], styles=None):
    """accuracy: method -> subtask -> (mean, std) in %; a grouped bar per subtask, chance as a tick."""
    colors = {method_and_seed(run)[0]: s["color"] for run, s in (styles or run_styles(accuracy)).items()}
    tasks = sorted(chance)
    width = 0.8 / max(1, len(accuracy))
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH, max(6, 1.4 * len(tasks))), 3.8), layout="constrained")
    for i, (method, per_task) in enumerate(accuracy.items()):
        xs = [t + i * width - 0.4 + width / 2 for t in range(len(tasks))]
        means = [per_task.get(task, (0, 0))[0] for task in tasks]
        stds = [per_task.get(task, (0, 0))[1] for task in tasks]
        ax.bar(xs, means, width, yerr=stds, label=method, color=colors[method], capsize=2)
    ax.scatter(range(len(tasks)), [100 * chance[t] for t in tasks], marker="_", s=900, color="black", label="chance")
    ax.set_xticks(range(len(tasks)), [t.replace("_", "\n") for t in tasks], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    fig.legend(fontsize=8, ncol=min(len(accuracy) + 1, 6), loc="outside upper center", frameon=False)
    return fig


def training_curves(logs: dict[str, list[dict]], styles=None):
    """One panel per logged term in a grid of up to 4 columns, one line per run; KLs on a log scale."""
    styles = styles or run_styles(logs)
    terms = [t for t in LOSS_TERMS if any(t in r for log in logs.values() for r in log)]
    cols = min(4, max(1, len(terms)))
    rows = max(1, math.ceil(len(terms) / cols))
    size = (PAGE_WIDTH * cols / 4, 2.8 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    for ax, term in zip(axes.flat, terms):
        for run, log in logs.items():
            points = [(r["step"], r[term]) for r in log if term in r]
            if points:
                ax.plot(*zip(*points), label=run, lw=1.2, **styles[run])
        title, ylabel = LOSS_TERMS[term]
        ax.set(title=title, xlabel="step", ylabel=ylabel, yscale="log" if term.startswith("kl") else "linear")
        if term.startswith("z_gain"):
            ax.axhline(0, color="0.6", lw=0.8)  # the level of a decoder that ignores Z
    spare = axes.flat[len(terms) :]
    for ax in spare:
        ax.axis("off")
    # The legend goes in the grid's first empty cell, or beside the grid if it is full.
    drawn = [run for run, log in logs.items() if log]
    if len(spare):
        style_legend(spare[0], styles, drawn, loc="center")
    else:
        style_legend(fig, styles, drawn, loc="outside right upper")
    return fig


def uses(log: list[dict], weight: str) -> bool:
    """Whether a run's objective uses `weight`: it logs a KL the weight multiplies and the weight is ever on."""
    return any(kl in r for r in log for kl in WEIGHTED_KLS[weight]) and any(r.get(weight) for r in log)


def schedules(logs: dict[str, list[dict]], styles=None):
    """beta and gamma over training for the runs whose objective uses them; one legend per weight."""
    styles = styles or run_styles(logs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for ax, (weight, kls) in zip(axes, WEIGHTED_KLS.items()):
        runs = [run for run, log in logs.items() if uses(log, weight)]
        for i, run in enumerate(runs):
            # Runs often share a schedule: shift each run's line a line width up or down (a point or
            # two, a percent of the axis), so shared curves lie side by side instead of hiding each other.
            shift = (i - (len(runs) - 1) / 2) * SCHEDULE_LW
            steps, values = zip(*[(r["step"], r[weight]) for r in logs[run]])
            (line,) = ax.plot(steps, values, label=run, lw=SCHEDULE_LW, **styles[run])  # unshifted: sets the limits
            line.set_transform(transforms.offset_copy(ax.transData, fig, y=shift, units="points"))
        ax.set(title=f"{weight}(t), weight of {' and '.join(kls)}", xlabel="step", ylabel=f"{weight} (KL weight)")
        if runs:
            ax.set_ylim(bottom=-0.05 * ax.get_ylim()[1])  # from 0, so a constant weight reads as one, not as noise
            ax.legend(fontsize=8, frameon=False, ncol=2 if len(runs) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "no run uses it", ha="center", transform=ax.transAxes)
    return fig


def panel_grid(n: int, cols: int = 4, size: float = 3.0):
    """n square-ish panels, up to `cols` a row, each wide enough for its (wrapped) title."""
    cols = min(cols, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def slot_similarity(matrices: dict[str, list[list[float]]]):
    """k x k cosine similarity of prior means, one heatmap per latent run."""
    fig, axes = panel_grid(len(matrices))
    for ax, (run, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set(title=wrapped(run), xlabel="slot", ylabel="slot")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity")
    return fig


def modality_sensitivity(sensitivity: dict[str, dict[str, list[float]]]):
    """Relative change of each slot's prior mean when the image vs the text is perturbed."""
    fig, axes = panel_grid(len(sensitivity), size=2.9)
    for ax, (run, parts) in zip(axes, sensitivity.items()):
        slots = range(len(parts["image"]))
        # Greys, not run colours: these bars are the two modalities, not runs.
        ax.bar([s - 0.2 for s in slots], parts["image"], 0.4, color="0.3", label="image perturbed")
        ax.bar([s + 0.2 for s in slots], parts["text"], 0.4, color="0.7", label="text perturbed")
        ax.set(title=wrapped(run), xlabel="slot", ylabel="|change| / |prior mean|")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return fig


def toy_theory(curve: dict):
    """amvl.theory.leakage_curve: leakage and contamination fall as gamma grows."""
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    ax.plot(curve["gamma"], curve["leakage_coefficient"], marker="o", color="black", label="leakage coefficient a*")
    ax.plot(curve["gamma"], curve["contamination"], marker="s", color="0.5", label="contamination KL(q||p*) (nats)")
    ax.set(xlabel="gamma (reverse-KL weight)", ylabel="a* (unitless) / KL (nats)")
    ax.legend(fontsize=8)
    return fig
