"""The GPU check's first section: what the machine is (GPU, driver, torch, CUDA, DALI, libnvcuvid), and the
CPU kernels compiled once so that no later section pays numba's cold start inside its cap."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from checks.gpu_harness import Context, commit


def check_environment(ctx: Context) -> None:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "gvisor": "gVisor" in Path("/proc/version").read_text(errors="replace") or platform.release() == "4.4.0",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None,
        "commit": commit(),
        "numba_cache": os.environ.get("NUMBA_CACHE_DIR", "beside the modules"),
    }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        env["driver"] = smi.stdout.split(",")[1].strip() if smi.stdout.count(",") >= 2 else None
    for module in ("nvidia.dali", "av", "grpc", "redis", "numba"):
        started = time.perf_counter()
        try:
            env[module] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as exc:
            env[module] = f"missing: {exc}"
        env[f"{module}_import_s"] = round(time.perf_counter() - started, 2)
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        env["libnvcuvid"] = "loads"
    except OSError as exc:
        env["libnvcuvid"] = f"does not load: {exc}"
    ctx.record(
        "environment",
        env,
        ("GPU", f"{env['gpu']} (sm {env['capability']})", ""),
        ("torch / CUDA / cuDNN", f"{env['torch']} / {env['cuda']} / {env['cudnn']}", ""),
        ("driver / DALI", f"{env.get('driver')} / {env['nvidia.dali']}", ""),
        ("libnvcuvid", env["libnvcuvid"][:40], "loads"),
    )
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible: nothing else can run")
    warm_up_kernels(ctx)


def warm_up_kernels(ctx: Context) -> None:
    """Compile the CPU kernels (numba) once into $NUMBA_CACHE_DIR, so that no later section pays the cold start
    inside its cap; timed."""
    from datagen.generator import Generator
    from datagen.video.decode.decoder import Decoder

    started = time.perf_counter()
    generator = Generator(ctx.manifest()[:1], device="cpu", decoder=Decoder("cpu", "pyav"), self_check=False)
    generator.generate([(0, 0, 0)])
    seconds = time.perf_counter() - started
    ctx.record("numba_warm_up_s", seconds, ("CPU kernels compiled (numba, cold)", f"{seconds:.1f} s", ""))
