#!/usr/bin/env bash
# The GPU check: one run of at most 300 s (checks/gpu_check.py: section caps 280 s; the outer timeout here is
# 330 s). A lent GPU gives 15 minutes (900 s) in all, machine start, uploads, idle waits and give-back included.
#
# Here, once per commit to be checked (builds the git-ignored .devpack/: DALI in 45 MiB parts, ~190 MiB):
#   bash checks/gpu_pack.sh
# Then device `run` calls BACK TO BACK, one per part (a machine goes back after 30 s idle, and the parts
# with it; prepare the next call before the previous one returns):
#   1. carry [".devpack/dali.txz.00"]                                      command: true   timeout_s: 60
#      (starts the machine: 60-120 s)
#   2. carry [".devpack/dali.txz.01"]                                      command: true   timeout_s: 60
#   3. carry [".devpack/dali.txz.02", ".devpack/videos", ".devpack/commit"] command: true   timeout_s: 60
#   4. carry [".devpack/wheels", ".devpack/install.sh"]                    timeout_s: 420
#      command: source .devpack/install.sh && bash checks/gpu_check.sh
#      (install ~30 s, then the check; $OUT brings back gpu_check.json and the logs: gpu_check.log, verify.log,
#      replica.log, pretrain_*.log)
# More parts if `ls .devpack/dali.txz.*` shows more (one call each, before the last). The arithmetic: start
# <= 120 s + 3 uploads x <= 30 s + install 30 s + check <= 330 s = <= 570 s, which leaves >= 330 s: time for
# one rerun of what failed after a fix while the machine is still warm (e.g.
#      command: source .devpack/install.sh && DEADLINE=150 bash checks/gpu_check.sh --only "trainer step"
# ), else give the machine back at once. The numba/llvmlite wheels are not sent: the device image has them.
# Copy $OUT/gpu_check.json to docs/results/gpu_check.json and the table to docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}  # compiled once (environment section), then loaded
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
timeout -k 10 330 python3 -m checks.gpu_check --videos .devpack/videos --out "$out" --deadline "${DEADLINE:-300}" "$@" \
  2>&1 | tee "$out/gpu_check.log"
