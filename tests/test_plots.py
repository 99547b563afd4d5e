"""The report's figures, inspected as matplotlib Figures: one colour per run everywhere, every axis
labelled, legends that list only what a panel draws, titles that don't collide."""

import json
from itertools import combinations

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer

from amvl.evaluation import plots
from amvl.stages import report

# What each run logs besides ntp/loss/beta/gamma (every run logs both weights, used or not).
TERMS = {
    "ntp": [],
    "elbo": ["kl_joint"],
    "fwd_s0": ["kl_forward"],
    "fwd_s1": ["kl_forward"],
    "rev": ["kl_reverse"],
    "amvl": ["kl_forward", "kl_reverse"],
    "amvl_late": ["kl_forward", "kl_reverse"],  # beta never switches on: not a beta run
}


def make_log(run: str) -> list[dict]:
    records = []
    for step in (2, 4, 6):
        record = {"step": step, "ntp": 5 - step / 10, "loss": 5.1 - step / 10, "beta": 0.05, "gamma": 0.05 * (step > 2)}
        record.update({kl: 3.0 / step for kl in TERMS[run]})
        if TERMS[run]:
            record.update(sigma_prior=1 + step / 100, sigma_posterior=1 - step / 100)
        if run == "amvl_late":
            record["beta"] = 0.0
        records.append(record)
    return records


LOGS = {run: make_log(run) for run in TERMS}
BETA_RUNS = ["elbo", "fwd_s0", "fwd_s1", "amvl"]
GAMMA_RUNS = ["rev", "amvl", "amvl_late"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rgba(color):
    return mcolors.to_rgba(color)


def data_lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()]


def test_seeds_of_a_method_share_its_colour_and_differ_in_line_style():
    styles = plots.run_styles(["ntp", "fwd_s0", "fwd_s1", "amvl_s0", "amvl_s1"])
    assert styles["fwd_s0"]["color"] == styles["fwd_s1"]["color"]
    assert styles["fwd_s0"]["linestyle"] != styles["fwd_s1"]["linestyle"]
    assert styles["fwd_s0"]["linestyle"] == styles["amvl_s0"]["linestyle"]  # a seed has one style across methods
    assert len({styles[r]["color"] for r in ("ntp", "fwd_s0", "amvl_s0")}) == 3


def test_every_line_carries_its_runs_label_and_colour_in_every_figure():
    styles = plots.run_styles(LOGS)
    figures = [plots.training_curves(LOGS, styles), plots.schedules(LOGS, styles)]
    colours = {}
    for line in [line for fig in figures for line in data_lines(fig)]:
        run = line.get_label()
        assert run in LOGS
        assert rgba(line.get_color()) == rgba(styles[run]["color"])
        colours.setdefault(run, set()).add(rgba(line.get_color()))
    assert set(colours) == set(LOGS) and all(len(c) == 1 for c in colours.values())
    # The term panels: a run appears in each panel of a term it logs, and only there.
    terms = [t for t in plots.LOSS_TERMS if any(t in log[0] for log in LOGS.values())]
    for ax, term in zip(figures[0].axes, terms):
        assert {line.get_label() for line in ax.get_lines()} == {run for run, log in LOGS.items() if term in log[0]}


SHARED_METRICS = {
    "chance": {"Counting": 0.25, "Jigsaw": 0.5},
    "macro_accuracy": 0.4,
    "micro_accuracy": 0.4,
    "split": "val",
    "mode": "generate",
    "tau": 0.0,
}


def test_the_report_colours_a_run_alike_in_every_figure_and_states_shared_settings_once(tmp_path, monkeypatch):
    runs = ["ntp", "fwd_s0", "fwd_s1", "amvl"]
    metrics_paths, summary_paths = [], []
    for i, run in enumerate(runs):
        metrics = dict(SHARED_METRICS, per_task={"Counting": 0.25 + i / 10, "Jigsaw": 0.5})
        (tmp_path / "results" / run).mkdir(parents=True)
        (tmp_path / "runs" / run).mkdir(parents=True)
        metrics_paths.append(tmp_path / "results" / run / "metrics.json")
        metrics_paths[-1].write_text(json.dumps(metrics))
        summary_paths.append(tmp_path / "runs" / run / "train_summary.json")
        summary_paths[-1].write_text(json.dumps({"objective": run, "steps": 6, "final": LOGS[run][-1]}))
        (tmp_path / "runs" / run / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in LOGS[run]))
    figures, save = {}, plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: (figures.__setitem__(path.name, fig), save(fig, path)))
    report.run({}, metrics_paths, summary_paths, tmp_path / "reports")

    colour = {}  # run (or method, for the bars) -> every colour it is drawn in, across figures
    for name in ("training_curves.png", "schedules.png"):
        for line in data_lines(figures[name]):
            colour.setdefault(line.get_label(), set()).add(rgba(line.get_color()))
    for bars in [c for c in figures["accuracy.png"].axes[0].containers if isinstance(c, BarContainer)]:
        for patch in bars.patches:
            colour.setdefault(bars.get_label(), set()).add(patch.get_facecolor())
    assert all(len(c) == 1 for c in colour.values()) and set(runs) | {"fwd"} <= set(colour)
    assert colour["fwd"] == colour["fwd_s0"] == colour["fwd_s1"]  # the bars are the mean over fwd's seeds
    assert len({next(iter(colour[r])) for r in ("ntp", "fwd", "amvl")}) == 3

    text = (tmp_path / "reports" / "report.md").read_text()
    assert "val, generate, tau 0.0 for every run." in text and "ntp: val" not in text


def test_the_settings_sentence_lists_only_the_runs_that_differ():
    metrics = {run: {"split": "val", "mode": "generate", "tau": 0.0} for run in ("ntp", "elbo", "fwd")}
    metrics["fwd"]["tau"] = 1.0
    assert report.settings_sentence(metrics) == (
        "Split, answer mode and prior temperature: val, generate, tau 0.0 for every run"
        " except fwd (val, generate, tau 1.0)."
    )


def every_figure():
    matrices = {run: [[1.0, 0.2], [0.2, 1.0]] for run in ("latent_det", "amvl_reverse_first")}
    sensitivity = {run: {"image": [0.1, 0.2], "text": [0.3, 0.1]} for run in matrices}
    accuracy = {"ntp": {"Counting": (30.0, 0.0)}, "fwd": {"Counting": (40.0, 2.0)}}
    return {
        "accuracy": plots.accuracy_bars(accuracy, {"Counting": 0.25}, plots.run_styles(LOGS)),
        "training_curves": plots.training_curves(LOGS),
        "schedules": plots.schedules(LOGS),
        "slot_similarity": plots.slot_similarity(matrices),
        "modality": plots.modality_sensitivity(sensitivity),
        "theory": plots.toy_theory({"gamma": [0.1, 1.0], "leakage_coefficient": [1.0, 0.0], "contamination": [0.5, 0]}),
    }


@pytest.mark.parametrize("name", list(every_figure()))
def test_every_axis_that_shows_data_has_a_y_label(name):
    fig = every_figure()[name]
    shown = [ax for ax in fig.axes if ax.has_data()]
    assert shown and all(ax.get_ylabel().strip() for ax in shown)


def test_schedules_list_only_runs_whose_objective_uses_a_nonzero_weight():
    beta, gamma = plots.schedules(LOGS).axes
    for ax, runs in ((beta, BETA_RUNS), (gamma, GAMMA_RUNS)):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == runs  # not ntp, which logs both weights
        assert [line.get_label() for line in ax.get_lines()] == runs


def test_runs_sharing_a_schedule_are_drawn_side_by_side():
    fig = plots.schedules(LOGS)
    fig.canvas.draw()
    beta = fig.axes[0]
    # elbo, fwd_s0, fwd_s1 and amvl log the same beta curve: on screen each sits a line width from the next.
    heights = sorted(line.get_transform().transform(line.get_xydata())[-1][1] for line in beta.get_lines())
    line_width_px = plots.SCHEDULE_LW * fig.dpi / 72
    assert min(b - a for a, b in zip(heights, heights[1:])) == pytest.approx(line_width_px)


def test_training_curves_form_a_grid_that_fits_the_page_with_one_legend_for_all_panels():
    fig = plots.training_curves(LOGS)
    panels = [ax for ax in fig.axes if ax.has_data()]
    assert len(panels) == 7 and len({ax.get_position().x0 for ax in panels}) <= 4
    assert fig.get_size_inches()[0] * 100 <= 1200  # the report saves at dpi 100; the HTML page is 1200px wide
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1  # one legend, for every panel: a colour per method, a line style per seed
    assert [t.get_text() for t in legends[0].get_texts()] == ["ntp", "elbo", "fwd", "rev", "amvl", "amvl_late",
                                                              "seed 0", "seed 1"]  # fmt: skip


@pytest.mark.parametrize("build", [plots.slot_similarity, plots.modality_sensitivity])
def test_panel_titles_do_not_collide(build):
    runs = ["latent_det", "elbo", "fwd", "rev", "amvl", "amvl_reverse_first", "amvl_reverse_first_s12", "elbo_s3"]
    if build is plots.slot_similarity:
        fig = build({run: [[1.0, 0.0], [0.0, 1.0]] for run in runs})
    else:
        fig = build({run: {"image": [0.1, 0.2], "text": [0.2, 0.1]} for run in runs})
    fig.canvas.draw()
    boxes = [ax.title.get_window_extent() for ax in fig.axes if ax.get_title()]
    assert len(boxes) == len(runs)
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))
    assert fig.get_size_inches()[0] * 100 <= 1200
