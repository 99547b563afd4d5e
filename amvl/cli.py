"""`amvl <stage>`: argument parsing only; each subcommand calls amvl.stages.<stage>.run.

Config comes either from YAML files (`--config config/config.yaml --run amvl`, for people) or
as the JSON a Snakemake rule passes (`--config-json`, exactly the sections the stage reads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amvl import config as configuration
from amvl import cpu_kernels
from amvl.errors import UserError


def stage_config(args) -> dict:
    if args.config_json:
        return configuration.from_json(args.config_json)
    loaded = configuration.load(*(args.config or ["config/config.yaml"]))
    run = getattr(args, "run", None)
    return configuration.resolve_run(loaded, run) if run else loaded


def add_config_args(parser: argparse.ArgumentParser, with_run: bool = False) -> None:
    parser.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file(s), later override earlier (default: config/config.yaml)",
    )
    parser.add_argument("--config-json", metavar="JSON", help="config sections as JSON (what the Snakemake rules pass)")
    if with_run:
        parser.add_argument("--run", help="name of the run in the config's `runs` (its overrides apply)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amvl", description="AMVL pipeline stages (normally run by Snakemake).")
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("prepare", help="generate or import the benchmark into data/<dataset>/")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write, e.g. data/synthetic")
    p.add_argument("--benchmark", help="instead: read this benchmark of config `benchmarks` (vstar, hrbench_4k, ...)")
    p.add_argument("--root", type=Path, help="with --benchmark: the folder of its local copy")
    p.add_argument("--experiment", default="", help="the experiment preparing it (recorded: another may not reuse it)")

    p = sub.add_parser("train", help="train one run with DeepSpeed (resumes from its last checkpoint)")
    add_config_args(p, with_run=True)
    p.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/amvl")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's

    p = sub.add_parser("convert", help="DeepSpeed checkpoint -> models/<experiment>/<run>/ (safetensors)")
    add_config_args(p)
    p.add_argument("--run-dir", type=Path, required=True, help="run folder written by `amvl train`")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")

    p = sub.add_parser("evaluate", help="answer the val (or test) split with latents from the prior")
    add_config_args(p, with_run=True)
    p.add_argument(
        "--model", type=Path, required=True,
        help="model folder written by `amvl convert`, or a Hugging Face Qwen2.5-VL / Qwen2-VL / Qwen3-VL folder (zero-shot)",
    )  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    p.add_argument("--benchmark", help="the prepared folder is this benchmark of config `benchmarks` (vstar, ...)")
    p.add_argument("--out", type=Path, required=True, help="results folder, e.g. results/amvl")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--limit", type=int, help="questions per subtask, for a quick look (overrides evaluate.limit)")

    p = sub.add_parser("ask", help="ask a model folder one question about images; prints its answer")
    p.add_argument("question", help="the question, as text")
    p.add_argument(
        "--model", type=Path, required=True,
        help="model folder written by `amvl convert`, or a Hugging Face Qwen2.5-VL / Qwen2-VL / Qwen3-VL folder",
    )  # fmt: skip
    p.add_argument("--image", type=Path, action="append", required=True, help="an image file; repeat for several, in order")
    p.add_argument("--choices", nargs="+", metavar="OPTION", help="the options, asked as BLINK asks them: (A) .. (B) ..")
    p.add_argument("--latents", action="store_true", help="also what each latent slot holds (prior sigma, readout)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")

    p = sub.add_parser("data", help="look at datasets")
    data = p.add_subparsers(dest="data_command", required=True)
    inspect = data.add_parser("inspect", help="counts per split and subtask; every problem, one line each")
    inspect.add_argument(
        "path",
        type=Path,
        help="a BLINK root (one folder per subtask), a prepared data/<dataset>/, a BLINK-schema split file "
        "(.parquet, .arrow), a training-record file (.jsonl, .parquet), or the local copy of a benchmark "
        "(V* Bench, HR-Bench, VisualPuzzles)",
    )
    inspect.add_argument(
        "--show-prompt", type=int, nargs="?", const=2, default=0, metavar="N",
        help="print the exact prompt of the first N questions (default 2) per subtask, as the model is given it",
    )  # fmt: skip
    inspect.add_argument(
        "--model", type=Path,
        help="with --show-prompt: the model folder whose chat template and image processor make the prompt "
        "(default: the released Qwen2.5-VL's format and image sizes)",
    )  # fmt: skip
    inspect.add_argument("--instruction", default="", help="with --show-prompt: evaluate.instruction to append")

    p = sub.add_parser("restamp", help="after `dvc pull`: outputs' times back in pipeline order (nothing reruns)")
    p.add_argument("--root", type=Path, default=Path("."), help="project folder (default: the current one)")

    p = sub.add_parser("report", help="write reports/<experiment>/report.md and its figures")
    add_config_args(p)
    p.add_argument("--metrics", type=Path, nargs="+", required=True, help="results/<experiment>/<run>/[<benchmark>/]metrics.json files")
    p.add_argument(
        "--summaries", type=Path, nargs="*", default=[],
        help="runs/<experiment>/<run>/train_summary.json files (none for zero-shot runs)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="report folder")
    return parser


def inspect_data(args) -> int:
    from amvl.data.inspect import format_summary, inspect, show_prompts

    if args.show_prompt:
        print(show_prompts(args.path, args.show_prompt, args.model, args.instruction))
        return 0
    summary, problems = inspect(args.path)
    print(format_summary(summary))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def dispatch(args) -> int:
    if args.stage == "data":
        return inspect_data(args)
    if args.stage == "ask":
        from amvl.ask import load, open_image

        images = [open_image(path) for path in args.image]  # a bad path stops before a model loads
        model = load(args.model, args.device)
        print(model.ask(images, args.question, args.choices, args.max_new_tokens, args.latents))
        return 0
    if args.stage == "restamp":
        from amvl.restamp import restamp

        print(f"restamped {restamp(args.root)} paths in pipeline order")
        return 0
    if args.stage == "prepare" and args.benchmark:
        from amvl.stages import prepare

        if not args.root:
            raise UserError("prepare --benchmark: say where its local copy is with --root FOLDER")
        prepare.benchmark(args.benchmark, args.root, args.out)
        return 0
    cfg = stage_config(args)
    if args.stage == "prepare":
        from amvl.stages import prepare

        prepare.run(cfg, args.out, args.experiment)
    elif args.stage == "train":
        from amvl.stages import train

        train.run(cfg, args.data, args.out, threads=args.threads)
    elif args.stage == "convert":
        from amvl.stages import convert

        convert.run(cfg, args.run_dir, args.out)
    elif args.stage == "evaluate":
        from amvl.stages import evaluate

        if args.limit is not None:
            cfg["evaluate"]["limit"] = args.limit
        metrics = evaluate.run(cfg, args.model, args.data, args.out, threads=args.threads, benchmark=args.benchmark)
        if metrics is None:
            pass  # a rank other than 0: rank 0 writes and says
        elif "score" in metrics:
            print(f"{metrics['benchmark']} score ({metrics['score_kind']}) {metrics['score']:.3f}")
        elif "macro_accuracy" in metrics:
            print(f"macro accuracy {metrics['macro_accuracy']:.3f}  micro {metrics['micro_accuracy']:.3f}")
        else:
            print(f"{metrics['questions']} answers in {args.out / 'submission.json'}")
    elif args.stage == "report":
        from amvl.stages import report

        report.run(cfg, args.metrics, args.summaries, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    cpu_kernels.pin()  # before any stage imports torch
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except UserError as e:
        print(f"amvl {args.stage}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
