"""What the packet index reads of a picture packet's bits, and the one rewrite a GPU decoder needs of them.

MPEG-4 Part 2 (UCF-101's and HMDB-51's AVIs): the coding types of a packet's VOPs, which give the pictures
in decode order and so their display order, and DivX's "packed B-frames" undone. H.264 stored as in MP4
(length-prefixed NAL units): which pictures no other refers to, and which are IDR pictures.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

import av

VOP_START = b"\x00\x00\x01\xb6"
USER_DATA_START = b"\x00\x00\x01\xb2"
MAX_NVOP_SIZE = 19  # FFmpeg's bound on a placeholder (not-coded VOP) packet


def vop_types(data: bytes) -> str:
    """The coding types of the MPEG-4 Part 2 VOPs in a packet ("I", "P", "B" or "S", in bitstream order)."""
    types, at = [], data.find(VOP_START)
    while 0 <= at < len(data) - 4:
        types.append("IPBS"[data[at + 4] >> 6])
        at = data.find(VOP_START, at + 4)
    return "".join(types)


def avcc_length_size(context: av.codec.context.CodecContext) -> int | None:
    """The NAL length field's size of H.264 stored as in MP4 (`avcC` extradata); None for other codecs and
    for Annex B streams, which are not parsed here."""
    extradata = bytes(context.extradata or b"")
    if context.name != "h264" or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


def h264_slices(data: bytes, length_size: int) -> tuple[bool, bool]:
    """Of an H.264 packet (length-prefixed NAL units): whether it holds slices and all have nal_ref_idc 0 (no
    picture refers to it; FFmpeg's `skip_frame=NONREF` skips exactly those), and whether it holds an IDR
    slice (nothing after it refers to a picture before it)."""
    at, slices, referenced, idr = 0, 0, False, False
    while at + length_size < len(data):
        size = int.from_bytes(data[at : at + length_size], "big")
        header = data[at + length_size]
        if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            referenced |= bool(header & 0x60)
            idr |= header & 0x1F == 5
            slices += 1
        at += length_size + size
    return slices > 0 and not referenced, idr


def mpeg4_pictures(packets: list[tuple[str, int]]) -> list[tuple[str, int]] | None:
    """The pictures FFmpeg decodes, in decode order, as (coding type, position of the packet whose decoding
    gives it), from each packet's VOP types and size; None for a pattern not recognised here.

    DivX/Xvid in AVI "pack" a B-frame behind the reference VOP decoded before it, followed by a placeholder
    packet (a not-coded VOP) in whose place FFmpeg decodes the packed B-frame."""
    pictures: list[tuple[str, int]] = []
    packed = False
    for position, (types, size) in enumerate(packets):
        if packed:  # this packet should be the placeholder: the packed B-frame is decoded in its place
            if len(types) != 1 or size > MAX_NVOP_SIZE:
                return None
            pictures.append(("B", position))
            packed = False
        elif is_packed(types):
            pictures.append((types[0], position))
            packed = True
        elif len(types) == 1:
            pictures.append((types, position))
        else:
            return None
    return pictures


def is_packed(types: str) -> bool:
    """Whether a packet of these VOP types carries a packed B-frame behind its reference VOP."""
    return len(types) == 2 and types[0] != "B" and types[1] == "B"


def display_order(pictures: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Pictures in the order they are shown: a B-frame at once, a reference when the next one is decoded."""
    shown: list[tuple[str, int]] = []
    pending: tuple[str, int] | None = None
    for picture in pictures:
        if picture[0] == "B":
            shown.append(picture)
        else:
            if pending is not None:
                shown.append(pending)
            pending = picture
    return shown + ([pending] if pending is not None else [])


def unpack_b_frames(packets: Iterable[tuple[int, bytes]], packed: Collection[int] | None = None) -> Iterator[bytes]:
    """Packed MPEG-4 packets (decode position, bytes; ascending positions, gaps allowed) as one picture per
    packet, as FFmpeg's `mpeg4_unpack_bframes` filter makes them: a packet holding a reference VOP and a B-VOP
    keeps the reference, and the B-VOP takes the place of the placeholder packet after it (a packet of
    another kind there is an error: ValueError). DivX's "packed" mark is taken off its user data, so a
    decoder that reads it does not look for a second VOP. A GPU decoder numbers pictures one per packet.

    `packed`: the positions of the packets that hold a packed B-frame, where the packet index knows them;
    the others are then not searched for a second VOP."""
    pending: dict[int, bytes] = {}  # position of a placeholder → the B-VOP it stands for
    for position, data in packets:
        if position in pending:
            if len(data) > MAX_NVOP_SIZE or len(vop_types(data)) != 1:
                raise ValueError(f"packet {position} follows a packed B-frame but is no placeholder")
            yield pending.pop(position)
            continue
        first = data.find(VOP_START)
        maybe = first >= 0 and (packed is None or position in packed)
        second = data.find(VOP_START, first + 4) if maybe else -1
        if second >= 0 and is_packed(vop_types(data)):  # the types are read only of the rare two-VOP packets
            pending[position + 1] = data[second:]
            yield unmark_packed(data[:second], first)
        else:
            yield unmark_packed(data, first)


def unmark_packed(data: bytes, vop: int = -1) -> bytes:
    """`data` with a DivX user data string's trailing packed mark ('p' before its end) removed. User data
    precedes the VOP: with the position of the first one (`vop`), nothing after it is searched."""
    at = data.find(USER_DATA_START, 0, vop if vop >= 0 else len(data))
    if at < 0:
        return data
    body = data[at + 4 : at + 4 + 256]
    mark = body.find(b"p\x00")
    if mark < 0:
        return data
    return data[: at + 4 + mark] + b"\x00" + data[at + 4 + mark + 1 :]
