"""Does the data path scale? Peak memory and time to the first training step at two dataset sizes.

    python benchmarks/data_scale.py                          # N = 1,000 and 20,000 (about 15 minutes on 2 cores)
    python benchmarks/data_scale.py --sizes 20 40 --steps 2  # a quick look

For each N it writes a Monet-SFT-125K-style copy (<root>/<Subset>/train.json, chat samples whose
user turns hold 1-4 images, 640x480 JPEGs at quality 80, one file each, as amvl/data/monet.py
reads it), then runs `amvl prepare` and the first `--steps` training steps of the embedded model
(`amvl train`), each in a fresh process. Peak RSS is the largest of those processes (and their
DataLoader workers): getrusage(RUSAGE_CHILDREN) of a wrapper process per stage. Time to first step
runs from starting `amvl train` to its first line in train_log.jsonl (logged every step): the
median of `--repeats` starts (the full run, then one-step runs), each with another train.seed, so
another first batch (1-4 images a row make one first step twice another), and a start slowed by
whatever else the machine runs does not decide it.

With every split held in memory both grew with N; streamed they should not. The last two lines:

    peak RSS ratio (large/small): X
    time to first step ratio (large/small): Y
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SUBSETS = ("Visual_CoT", "CogCoM")
ASK = "Put your final answer within \\boxed{}."  # Monet's user turns end so
WORDS = "red blue green sign cup table window car dog person left right top bottom small large near far".split()


def photo(rng: np.random.Generator) -> bytes:
    """A 640x480 JPEG at quality 80 about the size of a photo's (50-60 KB): a gradient, a few
    shapes, mild noise."""
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    a, b, c = rng.uniform(0.1, 0.5, 3)
    pixels = np.stack([x * a, y * b, (x + y) * c], -1) % 255 + rng.normal(0, 12, (480, 640, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        left, top = rng.integers(0, 600), rng.integers(0, 440)
        box = [left, top, left + rng.integers(10, 200), top + rng.integers(10, 200)]
        draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def write_monet(root: Path, n: int, seed: int = 0, pool: int = 128) -> None:
    """n samples over SUBSETS, each image its own file (bytes drawn from `pool` distinct photos,
    since making a JPEG costs more than copying one)."""
    rng = np.random.default_rng(seed)
    photos = [photo(rng) for _ in range(min(pool, 4 * n))]
    samples = {subset: [] for subset in SUBSETS}
    for i in range(n):
        subset = SUBSETS[i % len(SUBSETS)]
        (root / subset / "images").mkdir(parents=True, exist_ok=True)
        images = []
        for j in range(int(rng.integers(1, 5))):
            name = f"images/{i:06d}_{j}.jpg"
            (root / subset / name).write_bytes(photos[int(rng.integers(len(photos)))])
            images.append({"type": "image", "image": name})
        words = [str(w) for w in rng.choice(WORDS, 12)]
        question = f"Is the {words[0]} {words[1]} {words[2]} of the {words[3]} {words[4]}? " + ASK
        answer = str(rng.choice(["yes", "no", words[5]]))
        rationale = f"The {words[6]} {words[7]} is near the {words[8]}. <observation>It is {words[9]}.</observation>"
        samples[subset].append(
            {
                "metadata": {"sample_id": i, "dataset_name": subset},
                "data": [
                    {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                    {"role": "user", "content": [*images, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"{rationale} \\boxed{{{answer}}}"}]},
                ],
            }
        )
    for subset, items in samples.items():
        (root / subset / "train.json").write_text(json.dumps(items))


def environment() -> dict:
    """This interpreter's scripts first; no launcher variables (a child starts its own process group)."""
    launcher = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def measured(args: list[str], log: Path, first_line: Path | None = None) -> tuple[float, float, float | None]:
    """Run `python -m amvl ARGS` under a wrapper that reports its peak RSS: (MB, seconds, seconds
    until `first_line` has a line, if given)."""
    wrapper = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
    )
    rss = log.with_suffix(".rss")
    command = [sys.executable, "-c", wrapper, str(rss), sys.executable, "-m", "amvl", *args]
    logged = lambda: first_line is not None and first_line.exists() and first_line.read_text().strip()  # noqa: E731
    start, first = time.perf_counter(), None
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            if first is None and logged():
                first = time.perf_counter() - start
            time.sleep(0.02)
    if process.returncode != 0:
        sys.exit(f"amvl {args[0]} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    if first is None and logged():
        first = time.perf_counter() - start  # it finished between two looks
    return int(rss.read_text()) / 1024, time.perf_counter() - start, first


def scale(n: int, folder: Path, steps: int, batch: int, repeats: int) -> dict:
    root = folder / "Monet-SFT-125K"
    write_monet(root, n)
    config = {
        "experiment": "data_scale",
        "dataset": "data_scale",
        "data": {"train_records": str(root), "val_size": 2, "subtasks": ["Counting"]},
        "model": {"freeze_vision": False},
        "train": {"steps": steps, "batch_size": batch, "log_every": 1, "checkpoint_every": 10**6},
        "runs": {"amvl": {}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for seed in range(1, repeats):  # the repeated starts: one step, another first batch
        short = {**config, "train": {**config["train"], "steps": 1, "seed": seed}}
        (folder / f"short{seed}.yaml").write_text(yaml.safe_dump(short))
    data = folder / "data"

    def train(config_file: str, out: Path) -> tuple[float, float, float]:
        args = ["train", "--config", str(folder / config_file), "--run", "amvl", "--data", str(data)]
        return measured([*args, "--out", str(out), "--threads", "2"], folder / "train.log", out / "train_log.jsonl")

    os.sync()  # the copy's gigabytes on disk first: their writeback would slow the stage timed next
    prepare = ["prepare", "--config", str(folder / "config.yaml"), "--out", str(data)]
    prepare_mb, prepare_s, _ = measured(prepare, folder / "prepare.log")
    os.sync()
    train_mb, train_s, first = train("config.yaml", folder / "run")
    firsts = [first]
    for seed in range(1, repeats):
        again_mb, _, again_first = train(f"short{seed}.yaml", folder / f"run{seed}")
        train_mb, firsts = max(train_mb, again_mb), [*firsts, again_first]
    first = statistics.median(firsts)
    gb = (data / "train.parquet").stat().st_size / 1e9
    print(
        f"N={n}: train.parquet {gb:.2f} GB, prepare {prepare_s:.1f} s at {prepare_mb:.0f} MB peak; "
        f"train {train_mb:.0f} MB peak, {steps} steps in {train_s:.1f} s, first step after {first:.1f} s",
        flush=True,
    )
    return {"rss": max(prepare_mb, train_mb), "first": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 20000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="training starts timed per size (the median counts)")
    args = parser.parse_args()
    # Warm-up: the first import of torch, transformers and deepspeed reads them from disk; N = small would pay it.
    subprocess.run([sys.executable, "-c", "import amvl.stages.train"], cwd=REPO, env=environment(), check=True)
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"data_scale_{n}_") as folder:
            results.append(scale(n, Path(folder), args.steps, args.batch, args.repeats))
    small, large = results
    print(f"peak RSS ratio (large/small): {large['rss'] / small['rss']:.2f}")
    print(f"time to first step ratio (large/small): {large['first'] / small['first']:.2f}")


if __name__ == "__main__":
    main()
