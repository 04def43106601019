#!/usr/bin/env bash
# The GPU check: one run of at most 300 s (bench/gpu_check.py; the outer timeout below is 330 s). A lent
# GPU gives 15 minutes in all, machine start and uploads included; this recipe takes about 10 of them.
#
# Here, once per commit to be checked (builds the git-ignored .devpack/, ~190 MiB in parts of < 64 MiB):
#   bash bench/gpu_pack.sh
# Then five device `run` calls, BACK TO BACK (a machine goes back after 30 s idle, and the parts with it;
# prepare the next call before the previous one returns):
#   1. carry [".devpack/dali.txz.00"]                                   command: true        timeout_s: 60
#      (starts the machine: 1-2 min)
#   2. carry [".devpack/dali.txz.01"]                                   command: true        timeout_s: 60
#   3. carry [".devpack/dali.txz.02", ".devpack/videos", ".devpack/commit"]  command: true   timeout_s: 60
#   4. carry [".devpack/wheels-numba"]                                  command: true        timeout_s: 60
#   5. carry [".devpack/wheels", ".devpack/install.sh"]                 timeout_s: 420
#      command: source .devpack/install.sh && bash bench/gpu_check.sh
#      (install ~30 s, then the check; $OUT/gpu_check.json and $OUT/gpu_check.log come back)
# More parts if `ls .devpack/dali.txz.*` shows more (one call each). If minutes are left and the machine is
# still warm, rerun what failed after a fix, within the time left, e.g.
#      command: source .devpack/install.sh && DEADLINE=150 bash bench/gpu_check.sh --only "trainer step" fp32
# else give the machine back at once. Copy $OUT/gpu_check.json to docs/results/gpu_check.json and the
# table to docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
timeout -k 10 330 python3 -m bench.gpu_check --videos .devpack/videos --out "$out" --deadline "${DEADLINE:-300}" "$@" \
  2>&1 | tee "$out/gpu_check.log"
