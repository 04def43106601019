#!/usr/bin/env bash
# Prepare everything the GPU check (bench/gpu_check.sh) needs on a device machine that reaches no package
# index and takes at most ~64 MiB per call. Run here, from the repository root:
#
#   bash bench/gpu_pack.sh
#
# It builds .devpack/ (git-ignored): DALI in 45 MiB parts (../shared/tools/dali-offline-pack), the small
# wheels DALI needs plus PyAV, redis-py and the gRPC/protobuf runtime our generated code needs, numba, for
# CPython 3.12, the few real videos the check decodes, one synthetic video per codec the footage lacks, and the
# commit. How to send them and run the check: the header of bench/gpu_check.sh.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
../shared/tools/dali-offline-pack
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The same versions as the project's venv (`make install` first): generated gRPC/protobuf code checks them.
pins=$(.venv/bin/python -m pip freeze | grep -iE '^(av|redis|pyyaml|tqdm|pillow|prometheus.client|protobuf|grpcio|grpcio.health.checking|grpcio.reflection)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .devpack/wheels $pins
# numba and llvmlite (the CPU kernels of render and decode): 61 MiB, a call of their own.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .devpack/wheels-numba $(.venv/bin/python -m pip freeze | grep -iE '^(numba|llvmlite)==')
cat >> .devpack/install.sh <<'EOF'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .devpack/wheels-numba/*.whl || return 1
EOF
mkdir -p .devpack/videos
cp ../shared/videos/ucf101/v_SoccerJuggling_g23_c01.avi ../shared/videos/kinetics/R6llTwEh07w.mp4 \
   ../shared/videos/kinetics/SOX5yA1l24A.mp4 ../shared/videos/misc/bikes.mp4 .devpack/videos/
# One short 320x240 video of each codec the footage lacks: HEVC and VP9 for NVDEC, MJPEG and AV1 to see them
# routed away from it (DALI's GPU decoder rejects MJPEG; Hopper's NVDEC has no AV1).
.venv/bin/python -c "from datagen.demo import synthesize_demo; synthesize_demo('.devpack/videos', num_videos=4, seconds=2.4, codecs=('hevc', 'vp9', 'mjpeg', 'av1'))" 2>/dev/null
git rev-parse --short HEAD > .devpack/commit  # the device machine may have no git
du -sh .devpack/* | sort -h
echo "send and run: see the header of bench/gpu_check.sh"
