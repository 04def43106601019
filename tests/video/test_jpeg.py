"""JPEG headers and the CPU decoder: the pixels OpenCV's libjpeg-turbo gives, in RGB and RGBX, for every
subsampling and coding the encoders write; corrupt, truncated and foreign files refused with the reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datagen.video.jpeg import JpegError, decode_into, is_complete, read_header
from tests.frame_helpers import ENCODINGS, encode, opencv_decode


@pytest.fixture
def frame(footage_frames):
    return footage_frames["hmdb51"][10]  # 432x240: not a multiple of 16 wide


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_headers_say_size_subsampling_and_coding(frame, name):
    header = read_header(encode(frame, *ENCODINGS[name]))
    assert (header.width, header.height, header.size) == (432, 240, "432x240")
    assert header.sampling == (name if name.startswith("4:") else "4:2:0")
    assert header.coding == ("progressive" if name == "progressive" else "baseline")
    assert read_header(encode(frame[..., 0])).sampling == "grey"


@pytest.mark.parametrize("name", sorted(ENCODINGS))
@pytest.mark.parametrize("channels", [3, 4])
def test_the_cpu_decoder_gives_opencvs_pixels_exactly(frame, name, channels):
    data = encode(frame, *ENCODINGS[name])
    out = np.full((240, 432, channels), 7, np.uint8)
    decode_into(data, out)
    assert np.array_equal(out[..., :3], opencv_decode(data))
    if channels == 4:
        assert (out[..., 3] == 255).all()


def test_a_grey_jpeg_decodes_to_equal_channels(frame):
    data = encode(frame[..., 1])
    out = np.empty((240, 432, 3), np.uint8)
    decode_into(data, out)
    assert np.array_equal(out, opencv_decode(data))
    assert (out[..., 0] == out[..., 2]).all()


def test_a_picture_of_another_size_is_refused_not_misplaced(frame):
    with pytest.raises(JpegError, match="a 432x240 picture among 320x240 frames"):
        decode_into(encode(frame), np.empty((240, 320, 3), np.uint8))
    with pytest.raises(JpegError, match="a 432x240 picture among 440x248 frames"):
        decode_into(encode(frame), np.empty((248, 440, 3), np.uint8))


def test_corrupt_image_data_is_an_error_not_grey_pixels(frame):
    data = bytearray(encode(frame))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff\xd3" * 32  # restart markers inside the entropy data
    assert opencv_decode(bytes(data)) is not None  # OpenCV fills the damage in
    with pytest.raises(JpegError, match="corrupt JPEG"):
        decode_into(bytes(data), np.empty((240, 432, 3), np.uint8))


def test_truncated_and_foreign_files_are_named():
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    data = encode(np.zeros((64, 64, 3), np.uint8))
    assert is_complete(data) and is_complete(data + b"\x00" * 10) and not is_complete(data[:-20])
    cases = {
        b"": "empty file",
        png: r"not a JPEG \(a PNG image\)",
        b"hello world": r"not a JPEG \(starts with 68 65 6c 6c\)",
        data[:20]: "truncated JPEG",
    }
    for content, reason in cases.items():
        with pytest.raises(JpegError, match=reason):
            read_header(content)
        with pytest.raises(JpegError, match=reason):
            decode_into(content, np.empty((64, 64, 3), np.uint8))
    with pytest.raises(JpegError, match="corrupt JPEG"):
        decode_into(data[: len(data) // 2], np.empty((64, 64, 3), np.uint8))
