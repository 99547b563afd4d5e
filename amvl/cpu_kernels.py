"""Pin the CPU kernel paths, so a run gives the same bits whichever kernels the CPU would select.

torch, MKL and oneDNN each pick their kernels from the CPU they find (AVX-512 here, AVX2 there);
the kernels sum in different orders, a training run drifts by an ulp per step, and after 1,500
steps two machines report different accuracies. Every `amvl` command therefore asks all three
for their AVX2 paths, which every x86 CPU of the last decade has (measured cost on this
project's CPU training: none). Set AMVL_NATIVE_KERNELS=1 to let each library pick its fastest
path instead. The environment must be set before torch is imported: `amvl.cli` calls `pin()`
first thing. Thread counts matter too (sums split by thread); the config fixes them.

Not pinned: the CPU vendor. MKL honours `MKL_CBWR=AVX2` on Intel CPUs only; on AMD it takes one
path whatever the branch, so Intel and AMD machines still differ (docs/RUNNING.md, "Not across CPU
vendors"; `COMPATIBLE` would align them at about 2.5x the matmul time, not yet checked on Intel).
"""

from __future__ import annotations

import os
import platform
import sys

PORTABLE = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels (reductions, softmax, norms)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the AVX2 branch (matmuls)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions such as the vision patch embedding)
}


def has_avx2() -> bool:
    """Whether this is an x86-64 Linux CPU with AVX2 (elsewhere the libraries keep their choice)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def pin() -> None:
    """Set PORTABLE in this process's environment (children inherit it), unless opted out.
    A process that imported torch already (a test, a notebook) keeps the kernels it has."""
    if os.environ.get("AMVL_NATIVE_KERNELS") == "1" or not has_avx2() or "torch" in sys.modules:
        return
    for name, value in PORTABLE.items():
        if os.environ.get(name, value) != value:
            print(f"amvl: {name}={os.environ[name]} replaced by {value} (AMVL_NATIVE_KERNELS=1 keeps yours)",
                  file=sys.stderr)  # fmt: skip
        os.environ[name] = value
