"""DALI's image decoder on the CPU (the `mixed`/nvJPEG path runs only on a GPU: the first-contact probe covers
it there): the same bytes as libjpeg-turbo through `jpeg.decode_into`, and a bad picture in a batch costs only
itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.video.decode.dali_images import DaliJpegDecoder
from datagen.video.jpeg import JpegError, decode_into
from tests.frame_helpers import ENCODINGS, encode


@pytest.fixture(scope="module")
def pictures(footage_frames):
    """JPEGs of every encoding, of both sizes, with the pixels the CPU decoder gives each."""
    out = []
    for frames in footage_frames.values():
        for i, name in enumerate(sorted(ENCODINGS)):
            data = encode(frames[3 * i], *ENCODINGS[name])
            pixels = np.empty(frames.shape[1:], np.uint8)
            decode_into(data, pixels)
            out.append((data, pixels))
    return out


def targets_for(pictures) -> list[torch.Tensor]:
    return [torch.zeros(pixels.shape, dtype=torch.uint8) for _, pixels in pictures]


def test_dali_cpu_decodes_the_bytes_libjpeg_turbo_decodes(pictures):
    decoder = DaliJpegDecoder(torch.device("cpu"), batch_size=4)  # several runs, the last one short
    targets = targets_for(pictures)
    errors = decoder.decode([np.frombuffer(d, np.uint8) for d, _ in pictures], targets)
    assert errors == [None] * len(pictures)
    for target, (_, pixels) in zip(targets, pictures):
        assert np.array_equal(target.numpy(), pixels)  # measured: 0 levels apart on every picture


def test_a_bad_picture_fails_alone_and_the_pipeline_keeps_working(pictures):
    decoder = DaliJpegDecoder(torch.device("cpu"), batch_size=8)
    batch = [np.frombuffer(d, np.uint8) for d, _ in pictures[:4]]
    batch[2] = np.frombuffer(b"\xff\xd8 not really a jpeg", np.uint8)
    targets = targets_for(pictures[:4])
    targets[1] = torch.zeros((100, 100, 3), dtype=torch.uint8)  # a frame of another size than the source's
    errors = decoder.decode(batch, targets)
    assert [e is None for e in errors] == [True, False, False, True]
    assert isinstance(errors[2], JpegError) and "DALI could not decode it" in str(errors[2])
    assert "among 100x100 frames" in str(errors[1])
    assert np.array_equal(targets[3].numpy(), pictures[3][1])
    again = targets_for(pictures[:2])
    assert decoder.decode([np.frombuffer(d, np.uint8) for d, _ in pictures[:2]], again) == [None, None]
