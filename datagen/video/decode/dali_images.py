"""DALI's image decoder fed JPEG pictures, a batch per pipeline run: nvJPEG on a GPU, libjpeg-turbo on the CPU.

`fn.decoders.image` with `device="mixed"` decodes on the GPU's hardware JPEG engines where it has them (A100,
H100: baseline JPEGs) and with CUDA otherwise; with `device="cpu"` it is libjpeg-turbo, the same bytes as
`jpeg.decode_into` (measured: bench/jpeg_bench.py). nvJPEG's IDCT may differ from libjpeg-turbo's by a level;
chroma is upsampled as libjpeg-turbo does (`jpeg_fancy_upsampling`) and EXIF orientation is ignored, as
libjpeg-turbo ignores it, so the frames agree, which `frame_decoder.py` checks on first contact with each
kind of frame source before it trusts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from datagen.video.decode.dali import dali_reason, pipeline_options
from datagen.video.jpeg import JpegError


class DaliJpegDecoder:
    """`fn.decoders.image` on `device` (CUDA: nvJPEG, `mixed`; CPU: libjpeg-turbo), a batch of pictures per
    pipeline run. The pipeline is built on first use and rebuilt after an error (DALI invalidates it)."""

    def __init__(self, device: torch.device, batch_size: int = 128, num_threads: int = 2):
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._pipeline = None

    def decode(self, pictures: Sequence[np.ndarray], targets: Sequence[torch.Tensor]) -> list[JpegError | None]:
        """Decode each picture (uint8 bytes) into its target, an (H, W, 3) uint8 tensor on the device; the error
        of each picture that failed, else None. One bad picture fails DALI's whole batch, so a failed batch is
        run again one picture at a time to find it."""
        errors: list[JpegError | None] = []
        for start in range(0, len(pictures), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            try:
                errors += self._run(pictures[chunk], targets[chunk])
            except JpegError:
                errors += [self._run_one(p, t) for p, t in zip(pictures[chunk], targets[chunk])]
        return errors

    def _run_one(self, picture: np.ndarray, target: torch.Tensor) -> JpegError | None:
        try:
            return self._run([picture], [target])[0]
        except JpegError as exc:
            return exc

    def _run(self, pictures: Sequence[np.ndarray], targets: Sequence[torch.Tensor]) -> list[JpegError | None]:
        pipeline = self._pipeline or self._build()
        pipeline.feed_input("encoded", list(pictures))
        try:
            (output,) = pipeline.run()
        except RuntimeError as exc:
            self._pipeline = None
            raise JpegError(f"DALI could not decode it ({dali_reason(exc)})") from None
        errors: list[JpegError | None] = []
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for i, target in enumerate(targets):
            shape = tuple(output[i].shape())
            if shape != tuple(target.shape):
                want = f"{target.shape[1]}x{target.shape[0]}"
                errors.append(JpegError(f"DALI decoded a {shape[1]}x{shape[0]} picture among {want} frames"))
                continue
            if stream is None:
                target.copy_(torch.from_numpy(np.asarray(output[i])))
            else:
                from nvidia.dali.plugin.pytorch import feed_ndarray

                feed_ndarray(output[i], target, cuda_stream=stream)
            errors.append(None)
        return errors

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(**pipeline_options(self.device, self.batch_size, self.num_threads))
        def pictures():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(
                encoded,
                device="mixed" if gpu else "cpu",
                output_type=types.RGB,
                jpeg_fancy_upsampling=True,  # chroma upsampled as libjpeg-turbo does, not by replication
                adjust_orientation=False,  # frames as stored: libjpeg-turbo ignores EXIF orientation too
            )

        self._pipeline = pictures()
        self._pipeline.build()
        return self._pipeline
