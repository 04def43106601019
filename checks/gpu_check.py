"""GPU verification in one deadline: the self-check, CUDA generation, training and a fed trainer, on a real GPU.

    python -m checks.gpu_check --videos .devpack/videos --out $OUT [--deadline 300]   (see checks/gpu_check.sh)

Sections in order of value (checks/gpu_harness.py runs each in a process group of its own, with the smaller of
its cap and the time left; the caps sum to 280 s of the 300 s deadline). The first after the environment is
`ctp-datagen verify --device cuda`: every decode class probed against PyAV (an HMDB-51 packed-B AVI among
them; JPEG frames, baseline in a zip and progressive in a folder, against libjpeg-turbo), the renderer
against the CPU kernels. Nothing later depends on NVDEC working: generators decode with
`auto`, which routes a class DALI got wrong (or cannot run, as under gVisor without libnvcuvid) to PyAV. A
section that overruns is reported as timed out, never as a wrong result. One table is printed last.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from checks import gpu_correctness, gpu_environment, gpu_fed_trainer, gpu_throughput
from checks.gpu_harness import Context, Section, orchestrate, run_child

SECTIONS = [  # in order of value: what the deadline cuts is the last
    Section("environment", 20, gpu_environment.check_environment),
    Section("self-check (ctp-datagen verify --device cuda)", 50, gpu_correctness.check_self),
    Section("CUDA vs CPU generation", 25, gpu_correctness.check_generation),
    Section("datagen, one replica", 30, gpu_throughput.bench_datagen),
    Section("trainer step", 30, gpu_throughput.bench_trainer),
    Section("fed trainer", 60, gpu_fed_trainer.bench_fed_trainer),
    Section("two ranks on one GPU (gloo, SyncBatchNorm, bf16, an empty rank)", 25, gpu_correctness.check_two_ranks),
    Section("fp32 vs bf16 loss", 40, gpu_correctness.check_precision),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[".devpack/videos"])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"), help="folder for gpu_check.json")
    parser.add_argument("--deadline", type=float, default=300, help="seconds for every section together")
    parser.add_argument("--batch-size", type=int, default=64, help="datagen batch size")
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        metavar="WORD",
        help="run only the sections whose name holds one of these words (and the first, always)",
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.section:
        ctx = Context(args.videos, args.batch_size, Path(args.result), Path("/tmp/gpu_check_runs"), out)
        run_child(SECTIONS, args.section, ctx)
    else:
        child_args = ["--videos", *args.videos, "--batch-size", str(args.batch_size), "--out", str(out)]
        orchestrate(SECTIONS, args.deadline, out, child_args, args.only)


if __name__ == "__main__":
    main()
