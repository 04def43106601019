#!/usr/bin/env bash
# Every GPU check and benchmark in one run, within about 8 minutes (issue 7). On the device machine, after
# the parts made by bench/gpu_pack.sh have arrived (see its header):
#
#   source .devpack/install.sh && bash bench/gpu_check.sh
#
# Writes $OUT/gpu_check.json (everything) and $OUT/gpu_check.log; the short table is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.txt"
timeout 480 python3 bench/gpu_check.py --videos .devpack/videos --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
