"""What the Z-use probe (train.z_probe_every) costs: a training step with the probe against the same
step without it, side by side in one run, and the overhead at the default interval.

    python benchmarks/z_probe_cost.py          # about a minute on 2 CPU cores

Every method with latents of config/science.yaml (sequential slots: the prior's Z is rolled out one
pass a slot) and of config/config.yaml (the embedded default: slots in one pass), on a batch of
16 pointer-chasing questions, one thread. Each round times a step without the probe, then one with
it, on the same model and batch; medians over rounds. The probe adds three or four decode passes
without gradient over the slots and the answer (x's key/value cache is reused), and for a
sequential variational prior k - 1 roll-out passes over the slots.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from science_step_cost import method_configs, pointer_rows, timed_step, training_steps

DEFAULT = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--every", type=int, default=10, help="probe interval: the default is log_every, 10")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    methods = {f"science {name}": cfg for name, cfg in method_configs().items()}
    methods |= {f"default {name}": cfg for name, cfg in method_configs(DEFAULT).items()}
    steps = training_steps(methods, pointer_rows())
    steps = {name: step for name, step in steps.items() if step[1].slot_kind == "latent"}
    plain, probed = ({name: [] for name in steps} for _ in range(2))
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, step in steps.items():
            seconds = timed_step(*step), timed_step(*step, z_probe=True)
            if repeat:
                plain[name].append(seconds[0])
                probed[name].append(seconds[1])
    overheads = []
    for name in steps:
        step, with_probe = statistics.median(plain[name]), statistics.median(probed[name])
        overheads.append((with_probe - step) / (args.every * step))
        print(f"{name:>20}: step {1000 * step:6.1f} ms, with the probe {1000 * with_probe:6.1f} ms "
              f"({with_probe / step:.2f} x); every {args.every} steps: {100 * overheads[-1]:+.1f}% of training time")  # fmt: skip
    print(f"largest overhead of the probe every {args.every} steps: {100 * max(overheads):.1f}% of training time")


if __name__ == "__main__":
    main()
