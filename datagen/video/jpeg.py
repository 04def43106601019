"""JPEG pictures: their headers, and decoding them on the CPU (libjpeg-turbo).

The CPU decoder is libjpeg-turbo through simplejpeg, picked by measuring (bench/jpeg_bench.py,
docs/performance.md): OpenCV's `imdecode`, PIL and DALI-CPU's image decoder wrap the same library and give
the same bytes, but simplejpeg decodes straight into the caller's array, in RGB or RGBX, without the GIL. Its
strict mode raises on the corrupt data libjpeg-turbo would otherwise fill with grey, so a damaged frame is
reported, not trained on.

On a GPU, DALI decodes them (`dali_images.py`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import simplejpeg

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4 DHT, C8 reserved, CC DAC
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SIGNATURES = {b"\x89PNG": "a PNG image", b"GIF8": "a GIF image", b"BM": "a BMP image", b"RIFF": "a RIFF (WebP?) file"}


class JpegError(ValueError):
    """A picture that is not a JPEG, or not a readable one; the message says why."""


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    sampling: str  # "4:2:0", "4:2:2", "4:4:4", "4:4:0", "grey", "cmyk", or "HxV" of the luma
    coding: str  # "baseline", "progressive", "arithmetic": what a decoder must support

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def read_header(data: bytes) -> JpegHeader:
    """The frame header of a JPEG (its first bytes only); JpegError for anything else."""
    if not data:
        raise JpegError("empty file (0 bytes)")
    if data[:2] != SOI:
        kind = next((what for sig, what in _SIGNATURES.items() if data.startswith(sig)), "")
        raise JpegError(f"not a JPEG ({kind or 'starts with ' + data[:4].hex(' ')})")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise JpegError(f"corrupt JPEG header (no marker at byte {at})")
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, TEM, RSTn, SOI: no length
            at += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in _SOF:
            if at + 10 > len(data) or length < 8:
                break
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            components = data[at + 9]
            factors = [data[at + 11 + 3 * c] for c in range(components) if at + 11 + 3 * c < len(data)]
            if width == 0 or height == 0 or len(factors) != components:
                raise JpegError("corrupt JPEG frame header")
            coding = "arithmetic" if marker in _ARITHMETIC else "progressive" if marker in _PROGRESSIVE else "baseline"
            return JpegHeader(width, height, _sampling(factors), coding)
        if marker == 0xDA or marker == 0xD9:
            raise JpegError("corrupt JPEG (image data before its frame header)")
        at += 2 + length
    raise JpegError("truncated JPEG (no frame header)")


def _sampling(factors: list[int]) -> str:
    """The chroma subsampling a component list's (h << 4 | v) sampling factors describe."""
    if len(factors) == 1:
        return "grey"
    if len(factors) == 4:
        return "cmyk"
    luma, chroma = factors[0], set(factors[1:])
    h, v = luma >> 4, luma & 15
    if chroma != {0x11}:
        return "/".join(f"{f >> 4}x{f & 15}" for f in factors)
    return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0"}.get((h, v), f"{h}x{v}")


def is_complete(data: bytes) -> bool:
    """Whether the picture ends with its end-of-image marker (zero padding after it allowed): a file cut short
    (a copy interrupted, a full disk) does not."""
    return data[-64:].rstrip(b"\x00").endswith(EOI)


def decode_into(data: bytes, out: np.ndarray) -> None:
    """Decode a JPEG into `out`, a C-contiguous (H, W, 3) RGB or (H, W, 4) RGBX uint8 array of its exact size;
    JpegError when it is corrupt, another size, or not a JPEG."""
    colorspace = "RGBX" if out.shape[2] == 4 else "RGB"
    try:
        picture = simplejpeg.decode_jpeg(data, colorspace, buffer=out, strict=True)
    except ValueError as exc:
        header = _header_or_none(data)
        if header is not None and (header.height, header.width) != out.shape[:2]:
            raise JpegError(f"a {header.size} picture among {out.shape[1]}x{out.shape[0]} frames") from None
        raise JpegError(f"corrupt JPEG ({exc})") if header is not None else read_header_error(data) from None
    if picture.shape != out.shape:
        raise JpegError(f"a {picture.shape[1]}x{picture.shape[0]} picture among {out.shape[1]}x{out.shape[0]} frames")


def _header_or_none(data: bytes) -> JpegHeader | None:
    try:
        return read_header(data)
    except JpegError:
        return None


def read_header_error(data: bytes) -> JpegError:
    """The JpegError `read_header` raises for `data` (a generic one if it parses)."""
    try:
        read_header(data)
    except JpegError as exc:
        return exc
    return JpegError("corrupt JPEG")
