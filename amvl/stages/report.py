"""report: reports/<experiment>/report.md and a self-contained report.html beside it, over every run.

Every measured number comes from results/<experiment>/<run>/metrics.json or
runs/<experiment>/<run>/{train_summary.json,train_log.jsonl}; the paper's numbers come from
amvl/evaluation/paper_blink.json and are labelled as quoted. Runs named `<method>_s<seed>` are
seeds of one method: the tables show their mean ± std.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from amvl import theory
from amvl.data import benchmarks
from amvl.evaluation import plots
from amvl.io import atomic_dir
from amvl.objectives import OBJECTIVES

PAPER = Path(__file__).resolve().parent.parent / "evaluation" / "paper_blink.json"


def load_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def method_of(run: str) -> str:
    return plots.method_and_seed(run)[0]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def settings_sentence(metrics: dict[str, dict]) -> str:
    """Split, answer mode and prior temperature: once for the setting most runs share, then the runs that differ."""
    said = {run: f"{m['split']}, {m['mode']}, tau {m['tau']}" for run, m in metrics.items()}
    if not said:
        return ""
    usual = Counter(said.values()).most_common(1)[0][0]
    odd = [f"{run} ({s})" for run, s in said.items() if s != usual]
    return f"Split, answer mode and prior temperature: {usual} for every run" + (
        f" except {', '.join(odd)}." if odd else "."
    )


def method_label(method: str, ms: list[dict]) -> str:
    """`amvl (3 seeds)`, or for a model evaluated as it is, `base (zero-shot Qwen2.5-VL-7B-Instruct)`."""
    if ms[0].get("model", {}).get("zero_shot"):
        return f"{method} (zero-shot {Path(ms[0]['model']['path']).name})"
    return f"{method} ({len(ms)} seed{'s' if len(ms) > 1 else ''})"


def accuracy_section(metrics: dict[str, dict], score: str = "macro") -> tuple[list, dict, dict]:
    """The methods x subtasks table (mean ± std over seeds) with the `score` accuracy (macro or
    micro) as the headline, plus what the bar plot needs."""
    tasks = sorted({t for m in metrics.values() for t in m.get("per_task", {})})
    by_method = defaultdict(list)
    for run, m in metrics.items():
        by_method[method_of(run)].append(m)
    rows, bars = [], {}
    for method, ms in by_method.items():
        per_task = {t: [m["per_task"][t] for m in ms if t in m["per_task"]] for t in tasks}
        bars[method] = {t: mean_std([100 * v for v in vs]) for t, vs in per_task.items() if vs}
        rows.append(
            [method_label(method, ms)]
            + [cell(per_task[t]) if per_task[t] else "" for t in tasks]
            + [cell([m["macro_accuracy"] for m in ms]), cell([m["micro_accuracy"] for m in ms])]
        )
    chance = {t: c for m in metrics.values() for t, c in m.get("chance", {}).items()}
    rows.append(
        ["*chance*"]
        + [f"{100 * chance[t]:.1f}" for t in tasks]
        + [f"{100 * statistics.mean(chance[t] for t in tasks):.1f}", ""]
    )
    official = {"macro": ["macro (official)", "micro"], "micro": ["macro", "micro (official)"]}[score]
    header = ["method"] + [t.replace("_", " ") for t in tasks] + official
    return [header, *rows], bars, chance


def benchmark_blocks(name: str, metrics: dict[str, dict]) -> list:
    """A benchmark's section: our runs per category and its headline score, the paper's quoted beside."""
    bench = benchmarks.BENCHMARKS[name]
    table = accuracy_section(metrics, bench.score)[0]
    width = len(table[0])
    column = width - 2 if bench.score == "macro" else width - 1
    for model, value in bench.paper.items():
        quoted = [f"{model} (paper, quoted)"] + [""] * (width - 1)
        quoted[column] = f"{value:.2f}"
        table.append(quoted)
    how = "the mean of its category accuracies" if bench.score == "macro" else "the accuracy over all questions"
    return [
        ("h", 2, f"{bench.title}: accuracy (%)"),
        ("p", f"{settings_sentence(metrics)} Its score, as its authors report it, is {how}. The paper's rows are "
              "quoted from it (Qwen2.5-VL-7B backbone), not measured here."),
        ("table", table),
    ]  # fmt: skip


# The leakage table's columns: (header, what to read from diagnostics, percent or not, how values join).
DIAGNOSTIC_COLUMNS = [
    ("prior acc", lambda d: [d["prior_accuracy"]], True, ""),
    ("oracle acc", lambda d: [d["oracle_accuracy"]], True, ""),
    ("leak gap", lambda d: [d["leakage_gap"]], True, ""),
    ("follow-wrong (if Z ignored)", lambda d: [d["follow_wrong_rate"], d["follow_wrong_if_ignored"]], True, "()"),
    ("answer-swap var", lambda d: [d["answer_swap_variance"]], False, ""),
    ("KL(q‖p)", lambda d: [d["kl_posterior_prior"]], False, ""),
    ("prior var", lambda d: [d["prior_variance"]], False, ""),
    ("Z=0 acc", lambda d: [d["ablations"]["zero"]], True, ""),
    ("noise Z acc", lambda d: [d["ablations"]["noise"]], True, ""),
    ("shuffled Z acc", lambda d: [d["ablations"]["shuffled"]], True, ""),
    ("tau 0 / 0.2 / 1.0 acc", lambda d: list(d["tau_sweep"].values()), True, " / "),
]


def diagnostics_table(metrics: dict[str, dict]) -> list:
    """One row per run, and after the seeds of a method one row of their mean ± std."""
    rows = [["run"] + [header for header, *_ in DIAGNOSTIC_COLUMNS]]
    width = len(rows[0])
    by_method = defaultdict(list)
    for run, m in metrics.items():
        by_method[method_of(run)].append((run, m.get("diagnostics")))
    for method, runs in by_method.items():
        for run, d in runs:
            if not d:
                rows.append([run] + ["n/a (no latent slots)" if metrics[run].get("per_task") else ""] + [""] * (width - 2))
                continue
            rows.append([run] + [diagnostic_cell([[v] for v in read(d)], pct, join) for _, read, pct, join in DIAGNOSTIC_COLUMNS])
        seeds = [d for _, d in runs if d]
        if len(seeds) > 1:
            rows.append([f"{method}: mean ± std over {len(seeds)} seeds"] + [
                diagnostic_cell(list(zip(*(read(d) for d in seeds))), pct, join) for _, read, pct, join in DIAGNOSTIC_COLUMNS
            ])  # fmt: skip
    return rows


def diagnostic_cell(values: list[list[float]], pct: bool, join: str) -> str:
    """Each inner list is one quantity over seeds (one value for a single run)."""
    said = [cell(list(v)) if pct else f"{statistics.mean(v):.3g}" + (f" ± {statistics.pstdev(v):.2g}" if len(v) > 1 else "")
            for v in values]  # fmt: skip
    return f"{said[0]} ({said[1]})" if join == "()" else join.join(said)


def multi_hop(tasks) -> list[str]:
    """The subtasks that take several steps (`<name>_<n>hop`, n >= 2); all of them when none does."""
    hops = [t for t in tasks if (m := re.search(r"_(\d+)hop$", t)) and int(m[1]) >= 2]
    return hops or sorted(tasks)


def pooled_sd(a: list[float], b: list[float]) -> float:
    return math.sqrt((mean_std(a)[1] ** 2 + mean_std(b)[1] ** 2) / 2)


def science_blocks(metrics: dict[str, dict], no_posterior: set[str] = frozenset()) -> list:
    """Per subtask, mean ± std over seeds, of what decides the paper's claim, and the three
    questions answered from those numbers (amvl/evaluation/diagnostics.py `per_task`). Methods in
    `no_posterior` (latent_det) train no posterior: its oracle and follow-wrong read an untrained
    head, so they are not shown and such a method cannot leak."""
    by_method = defaultdict(list)
    for run, m in metrics.items():
        if m.get("per_task"):
            by_method[method_of(run)].append(m)
    tasks = sorted({t for ms in by_method.values() for m in ms for t in m["per_task"]})
    hard = multi_hop(tasks)
    # per method: accuracy over the multi-hop subtasks per seed (generated answers, prior latents)
    hard_accuracy = {method: [statistics.mean(m["per_task"][t] for t in hard) for m in ms] for method, ms in by_method.items()}
    header = ["method"] + [f"{t.replace('_', ' ')}: prior / zero-Z / oracle / follow-wrong (if ignored)" for t in tasks]
    table, latent = [header], {}
    for method, ms in by_method.items():
        if not all(m.get("diagnostics", {}).get("per_task") for m in ms):
            continue  # no latent slots (or results from before per-subtask diagnostics)
        per = lambda key, t: [m["diagnostics"]["per_task"][t][key] for m in ms]  # noqa: E731
        posterior = lambda t: "no posterior" if method in no_posterior else (  # noqa: E731
            f"{cell(per('oracle_accuracy', t))} / {cell(per('follow_wrong_rate', t))} ({cell(per('follow_wrong_if_ignored', t))})")
        table.append([method_label(method, ms)] + [
            f"{cell(per('prior_accuracy', t))} / {cell(per('zero_accuracy', t))} / {posterior(t)}" for t in tasks
        ])  # fmt: skip
        average = lambda key: [statistics.mean(m["diagnostics"]["per_task"][t][key] for t in hard) for m in ms]  # noqa: E731
        keys = ["prior_accuracy", "zero_accuracy", "oracle_accuracy", "follow_wrong_rate", "follow_wrong_if_ignored"]
        if all("answer_readout_posterior" in m["diagnostics"]["per_task"][hard[0]] for m in ms):
            keys += ["answer_readout_posterior", "answer_readout_prior"]
        latent[method] = {k: average(k) for k in keys}
    if not latent:
        return []
    said = ", ".join(t.replace("_", " ") for t in hard)
    readout = all("answer_readout_posterior" in v for v in latent.values())
    answers = [["method", "prior acc", "zero-Z acc", "(a) Z used?", "oracle - prior", "follow-wrong (if Z ignored)",
                *(["answer read out from q's / p's Z"] if readout else []), "(b) leaks?",
                "(c) above, by more than 2 sd", "(c) not above (difference)"]]  # fmt: skip
    for m, v in latent.items():
        mean = {key: statistics.mean(values) for key, values in v.items()}
        above, not_above = [], []
        for other, accuracy in hard_accuracy.items():
            if other != m:
                gap = statistics.mean(hard_accuracy[m]) - statistics.mean(accuracy)
                beats = gap > 2 * pooled_sd(hard_accuracy[m], accuracy) and len(accuracy) > 1
                above.append(other) if beats else not_above.append(f"{other} ({100 * gap:+.1f})")
        q = "no posterior" if m in no_posterior else None
        read = [f"{q or cell(v['answer_readout_posterior'])} / {cell(v['answer_readout_prior'])}"] if readout else []
        leaks = "leaks" if mean["follow_wrong_rate"] - mean["follow_wrong_if_ignored"] > 0.05 else "no"
        answers.append([
            method_label(m, by_method[m]), cell(v["prior_accuracy"]), cell(v["zero_accuracy"]),
            "used" if mean["prior_accuracy"] - mean["zero_accuracy"] >= 0.10 else "not used",
            q or cell([o - p for o, p in zip(v["oracle_accuracy"], v["prior_accuracy"])]),
            q or f"{cell(v['follow_wrong_rate'])} ({cell(v['follow_wrong_if_ignored'])})", *read,
            "no (no posterior)" if q else leaks, ", ".join(above) or "none", ", ".join(not_above) or "none",
        ])  # fmt: skip
    return [
        ("h", 2, "Is Z used, does it leak, does it help? (per subtask, mean ± std over seeds)"),
        ("p", "Likelihood-scored diagnostics on the val split, per subtask: prior accuracy, with Z zeroed, with "
              "Z from the posterior given the gold answer or rationale (oracle), and how often Z from a wrong answer's "
              "posterior is followed, beside the rate expected if Z were ignored."),
        ("table", table),
        ("p", f"Over the multi-hop subtasks ({said}), mean ± std over seeds. (a) Z is used where prior accuracy is "
              "at least 10 points above zero-Z. (b) A leak shows as follow-wrong more than 5 points above its "
              "Z-ignored level (oracle above prior is also what a posterior that reads the rationale should give); "
              "the answer read out of Z is a linear readout fitted on the other half of the split (chance: one over "
              "the options). (c) Accuracy of generated answers with prior latents, against every other method."),
        ("table", answers),
    ]  # fmt: skip


def paper_table() -> tuple[str, list]:
    paper = json.loads(PAPER.read_text())
    header = ["model (paper)"] + [t.replace("_", " ") for t in paper["subtasks"]] + ["BLINK avg (14)"]
    rows = [[name] + ["" if v is None else f"{v:.2f}" for v in values] for name, values in paper["rows"].items()]
    return paper["source"], [header, *rows]


def z_read_from(log: list[dict], gain: float = 0.1, probes: int = 3) -> str:
    """The first step from which the decoder reads Z's content: the shuffled-Z gain stays above `gain`
    nats for `probes` probes in a row ("never" if it does not; "" for a run that logs no probe)."""
    probed = [(r["step"], r["z_gain_shuffled"] > gain) for r in log if "z_gain_shuffled" in r]
    for i in range(len(probed) - probes + 1):
        if all(above for _, above in probed[i : i + probes]):
            return str(probed[i][0])
    return "never" if probed else ""


def training_table(summaries: dict[str, dict], logs: dict[str, list[dict]]) -> list:
    rows = [["run", "objective", "steps", "final L_ntp", "final KL(q‖p) terms", "sigma prior / posterior",
             "Z use: zeroed / shuffled / prior's Z (nats)", "Z read from step"]]  # fmt: skip
    for run, s in summaries.items():
        final, z_use = s.get("final", {}), s.get("z_use", {})
        kls = ", ".join(f"{k} {final[k]:.3g}" for k in ("kl_forward", "kl_reverse", "kl_joint") if k in final)
        sigmas = " / ".join(f"{final[k]:.3g}" for k in ("sigma_prior", "sigma_posterior") if k in final)
        gains = " / ".join(f"{z_use[k]:+.3f}" for k in ("z_gain", "z_gain_shuffled", "z_gain_prior") if k in z_use)
        rows.append([run, s["objective"], str(s["steps"]), f"{final.get('ntp', float('nan')):.3f}", kls, sigmas, gains,
                     z_read_from(logs.get(run, []))])  # fmt: skip
    return rows


def markdown(blocks: list) -> str:
    out = []
    for kind, *content in blocks:
        if kind == "h":
            out.append(f"{'#' * content[0]} {content[1]}")
        elif kind == "p":
            out.append(content[0])
        elif kind == "table":
            table = content[0]
            out.append("\n".join(["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
                                 + ["| " + " | ".join(r) + " |" for r in table[1:]]))  # fmt: skip
        elif kind == "img":
            out.append(f"![{content[0]}]({content[1]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list, folder: Path) -> str:
    """The same blocks as one HTML file, figures embedded, readable offline."""
    body = []
    for kind, *content in blocks:
        if kind == "h":
            body.append(f"<h{content[0]}>{html.escape(content[1])}</h{content[0]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(content[0])}</p>")
        elif kind == "table":
            head, *rows = content[0]
            cells = lambda r, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in r)  # noqa: E731
            body.append(
                f"<table><tr>{cells(head, 'th')}</tr>"
                + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
                + "</table>"
            )
        elif kind == "img":
            data = base64.b64encode((folder / content[1]).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(content[0])}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}img{max-width:100%}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>amvl report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def run(cfg: dict, metrics_paths: list[Path], summary_paths: list[Path], out_dir: Path) -> None:
    # results/<experiment>/<run>/metrics.json, and results/<experiment>/<run>/<benchmark>/metrics.json
    metrics, on_benchmark = {}, defaultdict(dict)
    for path in map(Path, metrics_paths):
        m = json.loads(path.read_text())
        if "benchmark" in m:
            on_benchmark[m["benchmark"]][path.parent.parent.name] = m
        else:
            metrics[path.parent.name] = m
    summaries = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in summary_paths}
    logs = {Path(p).parent.name: load_log(Path(p).parent / "train_log.jsonl") for p in summary_paths}
    diagnosed = {run: m["diagnostics"] for run, m in metrics.items() if m.get("diagnostics")}
    accuracy, bars, chance = accuracy_section({r: m for r, m in metrics.items() if m.get("per_task")})
    source, paper = paper_table()
    # One run -> colour/line style mapping for every figure, so a run looks the same in each.
    styles = plots.run_styles(list(dict.fromkeys([*metrics, *summaries])))

    with atomic_dir(out_dir) as folder:
        blocks = [
            ("h", 1, "amvl report"),
            ("h", 2, "Accuracy (%), latents from the prior"),
            ("p", f"{settings_sentence(metrics)} BLINK's official score is the macro mean of the subtask accuracies."),
            ("table", accuracy),
        ]  # fmt: skip
        if bars:
            plots.save(plots.accuracy_bars(bars, chance, styles), folder / "accuracy.png")
            blocks.append(("img", "accuracy per subtask", "accuracy.png"))
        blocks += [("h", 2, "The paper's BLINK numbers"), ("p", source), ("table", paper)]
        for name in benchmarks.BENCHMARKS:
            if name in on_benchmark:
                blocks += benchmark_blocks(name, on_benchmark[name])
        if diagnosed:
            blocks += [
                ("h", 2, "Leakage diagnostics (val split, likelihood scoring)"),
                ("p", "Oracle: Z from the posterior given the gold answer. Follow-wrong: Z from the posterior given a "
                      "wrong option; in brackets the rate expected if the decoder ignored Z. Z=0 / noise / shuffled: "
                      "the decoder's accuracy with its latents replaced; close to prior accuracy means Z is unused."),
                ("table", diagnostics_table(metrics)),
            ]  # fmt: skip
            similarity = {r: d["slot_similarity"] for r, d in diagnosed.items()}
            plots.save(plots.slot_similarity(similarity), folder / "slot_similarity.png")
            sensitivity = {r: d["modality_sensitivity"] for r, d in diagnosed.items()}
            plots.save(plots.modality_sensitivity(sensitivity), folder / "modality.png")
            blocks += [
                ("img", "slot similarity", "slot_similarity.png"),
                ("img", "modality sensitivity", "modality.png"),
            ]
        no_posterior = {method_of(r) for r, s in summaries.items() if OBJECTIVES.get(s.get("objective"), ("", ""))[1] == "prior_mean"}
        blocks += science_blocks(metrics, no_posterior)
        plots.save(plots.training_curves(logs, styles), folder / "training_curves.png")
        plots.save(plots.schedules(logs, styles), folder / "schedules.png")
        plots.save(plots.toy_theory(theory.leakage_curve()), folder / "theory.png")
        blocks += [
            ("h", 2, "Training"),
            ("table", training_table(summaries, logs)),
            ("p", "Z use: how much the answer loss of a training batch rises, with no gradient, when the latents "
                  "the decoder was trained on are zeroed or shuffled across the batch, and (variational objectives) "
                  "how much lower it is with the prior's Z than with Z zeroed; the mean of the last 10 probes "
                  "(train.z_probe_every). Near 0: the decoder ignores Z. Zeroed Z is out of distribution for a "
                  "decoder, so 'shuffled' is the cleaner test of whether Z's content is read; 'Z read from step' "
                  "is the first probe from which the shuffled gain stays above 0.1 nats for three probes."),
            ("p", "A method has one colour in every figure; its seeds share it and differ in line style."),
            ("img", "training curves", "training_curves.png"),
            ("p", "A KL weight is shown only for the runs whose objective uses it. Runs with the same schedule share "
                  "one curve: each run is drawn shifted a line width up or down so they show side by side."),
            ("img", "KL weight schedules", "schedules.png"),
            ("h", 2, "The toy model (docs/METHOD.md section 5)"),
            ("p", "amvl.theory.leakage_curve: the posterior's optimal leakage coefficient and the contamination left "
                  "with a forward-optimal prior, against the reverse-KL weight gamma (closed form, checked numerically "
                  "in tests/test_theory.py)."),
            ("img", "toy theory", "theory.png"),
        ]  # fmt: skip
        (folder / "report.md").write_text(markdown(blocks))
        (folder / "report.html").write_text(to_html(blocks, folder))
