#!/usr/bin/env bash
# Prepare everything the GPU check (bench/gpu_check.sh) needs on a device machine that reaches no package
# index and takes at most ~64 MiB per call. Run here, from the repository root:
#
#   bash bench/gpu_pack.sh
#
# It builds .devpack/ (git-ignored): DALI in 45 MiB parts (../shared/tools/dali-offline-pack), the small
# wheels DALI needs plus PyAV and redis-py for CPython 3.12, and the few real videos the check decodes.
# Then, on the device tool, one `run` per line, back to back (the warm machine keeps ignored files between
# calls; each call carries at most 64 MiB with the repository, so the wheels travel on their own):
#   carry [".devpack/dali.txz.00"]                                   command: true
#   carry [".devpack/dali.txz.01"]                                   command: true
#   carry [".devpack/dali.txz.02", ".devpack/videos"]                command: true
#   carry [".devpack/wheels", ".devpack/install.sh"]                 timeout_s: 540
#   command: source .devpack/install.sh && bash bench/gpu_check.sh
# (more parts if `ls .devpack/dali.txz.*` shows more; the script prints every size at the end).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
../shared/tools/dali-offline-pack
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The same versions as the project's venv (`make install` first): generated gRPC/protobuf code checks them.
pins=$(.venv/bin/python -m pip freeze | grep -iE '^(av|redis|pyyaml|tqdm|pillow|prometheus.client|protobuf|grpcio|grpcio.health.checking|grpcio.reflection)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .devpack/wheels $pins
mkdir -p .devpack/videos
cp ../shared/videos/ucf101/v_SoccerJuggling_g23_c01.avi ../shared/videos/kinetics/R6llTwEh07w.mp4 \
   ../shared/videos/kinetics/SOX5yA1l24A.mp4 ../shared/videos/misc/bikes.mp4 .devpack/videos/
du -sh .devpack/* | sort -h
echo "last call carries: the last dali part, .devpack/wheels, .devpack/install.sh, .devpack/videos"
