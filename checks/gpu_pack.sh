#!/usr/bin/env bash
# Prepare everything the GPU check (checks/gpu_check.sh) needs on a device machine that reaches no package
# index and takes at most ~64 MiB per call. Run here, from the repository root:
#
#   bash checks/gpu_pack.sh
#
# It builds .devpack/ (git-ignored): DALI in 45 MiB parts (../shared/tools/dali-offline-pack), the small
# wheels DALI needs plus PyAV, redis-py and the gRPC/protobuf runtime our generated code needs, for CPython
# 3.12 (the device image has numba, llvmlite and OpenCV already), the few real videos the check decodes (an
# HMDB-51 packed-B AVI among them), one synthetic video per codec the footage lacks, and the commit. How to
# send them and run the check: the header of checks/gpu_check.sh.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
../shared/tools/dali-offline-pack
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The same versions as the project's venv (`make install` first): generated gRPC/protobuf code checks them.
pins=$(.venv/bin/python -m pip freeze | grep -iE '^(av|redis|pyyaml|tqdm|pillow|prometheus.client|protobuf|grpcio|grpcio.health.checking|grpcio.reflection|simplejpeg)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .devpack/wheels $pins
mkdir -p .devpack/videos
for video in ucf101/v_SoccerJuggling_g23_c01.avi hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi \
             kinetics/R6llTwEh07w.mp4 kinetics/SOX5yA1l24A.mp4 misc/bikes.mp4; do
  cp "../shared/videos/$video" .devpack/videos/
done
# One short 320x240 video of each codec the footage lacks: HEVC and VP9 for NVDEC, MJPEG and AV1 to see them
# routed away from it (DALI's GPU decoder rejects MJPEG; Hopper's NVDEC has no AV1).
.venv/bin/python -c "from datagen.video.synthetic import synthesize_demo; synthesize_demo('.devpack/videos', num_videos=4, seconds=2.4, codecs=('hevc', 'vp9', 'mjpeg', 'av1'))" 2>/dev/null
# JPEG frames for nvJPEG's first-contact probe: an official CtP zip (img_00001.jpg, ... baseline) and a folder
# of progressive ones, from the UCF-101 video's first 96 / 48 frames.
.venv/bin/python - <<'PY'
import zipfile
from pathlib import Path

import cv2
import numpy as np

from datagen.video.decode.decoder import PyAVDecoder
from datagen.video.manifest import probe

frames = PyAVDecoder().decode(probe("../shared/videos/ucf101/v_SoccerJuggling_g23_c01.avi"), np.arange(96))
with zipfile.ZipFile(".devpack/videos/v_SoccerJuggling_g23_c01.zip", "w") as z:
    for i, f in enumerate(frames):
        z.writestr(f"img_{i + 1:05d}.jpg", cv2.imencode(".jpg", f[..., ::-1])[1].tobytes())
folder = Path(".devpack/videos/v_SoccerJuggling_g23_c01_progressive")
folder.mkdir(exist_ok=True)
for i, f in enumerate(frames[:48]):
    cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), f[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
PY
git rev-parse --short HEAD > .devpack/commit  # the device machine may have no git
du -sh .devpack/* | sort -h
echo "send and run: see the header of checks/gpu_check.sh"
