"""Generate the Python code of the wire contract: `python -m protos.build` (what `make proto` runs)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("protos/datagen.proto",)
GENERATED = ("datagen_pb2.py", "datagen_pb2.pyi", "datagen_pb2_grpc.py")  # inside protos/


def generate(out_root: Path = ROOT) -> None:
    """Write the generated modules under `out_root`/protos/, importable as `protos.<module>`."""
    from grpc_tools import protoc  # a build-time tool: the dev extra, not a runtime dependency

    out = str(out_root)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(ROOT / s) for s in SOURCES]) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(SOURCES)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
