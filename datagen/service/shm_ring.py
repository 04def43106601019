"""A shared-memory ring of fixed-size slots: clip bytes cross between co-located processes without gRPC.

The client (the consumer) creates the ring and owns it; a replica (the producer) attaches when it sees the
same segment. Each slot has a state byte that only the producer moves FREE → CLAIMED → FULL and only the
consumer moves FULL → FREE, so no lock is shared between processes: the descriptor the producer sends on
the gRPC stream after marking a slot FULL orders the bytes before the consumer reads them. A FULL slot is
tagged with the stream that filled it, so the consumer can take back slots of streams it abandoned.

A ring is named `ctp-<uid>-<pid>-<random>` after its owner, who holds a shared `flock` on it for its
lifetime. The kernel drops that lock when the owner dies however it dies (SIGKILL of its process group,
an OOM kill, when no Python resource tracker survives to remove the segment), so anyone can tell an
orphan: a `ctp-` segment nobody holds a lock on (`sweep_orphans`). The lock, not the pid, decides: pids
are not comparable across the PID namespaces of containers that share one /dev/shm.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from typing import cast

import numpy as np
import torch

FREE, CLAIMED, FULL = 0, 1, 2
_MAGIC = b"CTPRING1"
_HEADER = struct.Struct("<8s16sIQ")  # magic, nonce, number of slots, bytes per slot
_SLOT = struct.Struct("<B7xQ")  # state, stream id
_PAGE = 4096
_SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}")
_OWNED = re.compile(r"ctp-\d+-\d+-[0-9a-f]+")  # ctp-<uid>-<pid>-<random>: a ring and whose it is
ORPHAN_GRACE_S = 5.0  # a segment younger than this may be one whose owner has not taken its lock yet

log = logging.getLogger(__name__)


class RingUnreachable(Exception):
    """The ring cannot be used from this process (another host or IPC namespace, or no room in /dev/shm)."""


class ShmRing:
    """`num_slots` slots of `slot_bytes` each, plus a small header that both sides check."""

    def __init__(
        self,
        name: str,
        buf: memoryview,
        unmap: Callable[[], None],
        num_slots: int,
        slot_bytes: int,
        nonce: bytes,
        unlink: Callable[[], None] | None = None,
    ):
        self.name = name
        self._buf = buf
        self._unmap = unmap
        self._unlink = unlink  # the owner's: removes the segment
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        self.nonce = nonce
        self._data_offset = _round_up(_HEADER.size + num_slots * _SLOT.size, _PAGE)
        self._claim_lock = threading.Lock()  # producer threads of one process claim slots one at a time

    @classmethod
    def create(cls, num_slots: int, slot_bytes: int) -> ShmRing:
        """A new ring, every page reserved up front so a full /dev/shm fails here and not with SIGBUS later."""
        slot_bytes = _round_up(slot_bytes, _PAGE)
        size = _round_up(_HEADER.size + num_slots * _SLOT.size, _PAGE) + num_slots * slot_bytes
        name = f"ctp-{os.getuid()}-{os.getpid()}-{secrets.token_hex(6)}"
        shm = SharedMemory(name, create=True, size=size)  # its resource tracker removes it if only this process dies
        fd = shm._fd  # type: ignore[attr-defined]  # the segment's own descriptor, open as long as the ring
        fcntl.flock(fd, fcntl.LOCK_SH)  # the owner's mark, dropped by the kernel when this process dies
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            shm.close()
            shm.unlink()
            raise RingUnreachable(f"no room for a {size >> 20} MiB ring in /dev/shm ({exc.strerror})") from exc
        nonce = secrets.token_bytes(16)
        buf = cast(memoryview, shm.buf)  # None only once closed
        _HEADER.pack_into(buf, 0, _MAGIC, nonce, num_slots, slot_bytes)
        return cls(shm.name, buf, shm.close, num_slots, slot_bytes, nonce, unlink=shm.unlink)

    @classmethod
    def attach(cls, name: str, nonce: bytes) -> ShmRing:
        """The producer's view of a client's ring; RingUnreachable when this process cannot see that ring."""
        if not _NAME.fullmatch(name):
            raise RingUnreachable(f"{name!r} is not a shared-memory segment name")
        try:
            fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:  # another host or IPC namespace, or another user (the ring is mode 0600)
            raise RingUnreachable(f"shared memory {name!r} is not visible here ({exc.strerror})") from exc
        try:
            mapping = mmap.mmap(fd, 0)
        except (OSError, ValueError) as exc:
            raise RingUnreachable(f"shared memory {name!r} cannot be mapped ({exc})") from exc
        finally:
            os.close(fd)
        buf = memoryview(mapping)
        magic, found, num_slots, slot_bytes = (
            _HEADER.unpack_from(buf, 0) if len(buf) >= _HEADER.size else (b"", b"", 0, 0)
        )
        needed = _round_up(_HEADER.size + num_slots * _SLOT.size, _PAGE) + num_slots * slot_bytes
        if magic != _MAGIC or found != nonce or needed > len(buf):
            buf.release()
            mapping.close()
            raise RingUnreachable(f"shared memory {name!r} here is not the client's ring (nonce or size differs)")
        return cls(name, buf, mapping.close, num_slots, slot_bytes, nonce)

    def put(self, data: torch.Tensor, stream_id: int) -> int | None:
        """Producer: copy `data` (any device, any strides) into a free slot, laid out contiguously, and mark it
        FULL; None if none is free or fits. One copy, from the tensor itself into the shared pages: a CUDA
        tensor goes device to host straight into the slot, not through a host tensor of its own first."""
        nbytes = data.numel() * data.element_size()
        if nbytes > self.slot_bytes:
            return None
        with self._claim_lock:
            slot = next((i for i in range(self.num_slots) if self._state(i) == FREE), None)
            if slot is None:
                return None
            self._set(slot, CLAIMED, stream_id)
        slot_tensor = torch.frombuffer(self._buf, dtype=torch.uint8, count=nbytes, offset=self._slot_offset(slot))
        slot_tensor.view(data.dtype).view(data.shape).copy_(data.detach())  # slots are page-aligned for any dtype
        self._set(slot, FULL, stream_id)
        return slot

    def take(self, slot: int, nbytes: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Consumer: copy a FULL slot's first `nbytes` out (into `out`, a uint8 CPU tensor of that many bytes, if
        given: pinned memory for a GPU) and free the slot."""
        if not 0 <= slot < self.num_slots or not 0 <= nbytes <= self.slot_bytes or self._state(slot) != FULL:
            raise ValueError(f"ring {self.name}: slot {slot} with {nbytes} bytes is not a filled slot")
        if out is None:
            out = torch.from_numpy(self._view(slot, nbytes).copy())
        else:
            np.copyto(out.numpy(), self._view(slot, nbytes))
        self._set(slot, FREE, 0)
        return out

    def reclaim(self, live_streams: set[int]) -> int:
        """Consumer: free FULL slots whose stream is no longer read (cancelled, failed); returns how many."""
        freed = 0
        for slot in range(self.num_slots):
            state, stream_id = _SLOT.unpack_from(self._buf, self._slot_entry(slot))
            if state == FULL and stream_id not in live_streams:
                self._set(slot, FREE, 0)
                freed += 1
        return freed

    def free_slots(self) -> int:
        return sum(self._state(i) == FREE for i in range(self.num_slots))

    def close(self) -> None:
        """Unmap; the owner also removes the segment (first, while it still holds its lock: no sweeper takes it
        for an orphan in between)."""
        if self._unlink is not None:
            self._unlink()
        else:
            self._buf.release()
        self._unmap()

    def orphaned(self) -> bool:
        """The ring's owner is gone: its segment was removed, or no process holds the owner's lock any more."""
        return _owner_gone(self.name, grace_s=0.0) is not False

    def _slot_entry(self, slot: int) -> int:
        return _HEADER.size + slot * _SLOT.size

    def _slot_offset(self, slot: int) -> int:
        return self._data_offset + slot * self.slot_bytes

    def _view(self, slot: int, nbytes: int) -> np.ndarray:
        return np.frombuffer(self._buf, np.uint8, count=nbytes, offset=self._slot_offset(slot))

    def _state(self, slot: int) -> int:
        return self._buf[self._slot_entry(slot)]

    def _set(self, slot: int, state: int, stream_id: int) -> None:
        # The stream id goes first so a reader that sees the new state also sees whose slot it is.
        entry = self._slot_entry(slot)
        struct.pack_into("<Q", self._buf, entry + 8, stream_id)
        self._buf[entry] = state


class AttachedRings:
    """A replica's attachments to its clients' rings: opened once, dropped after `idle_s` unused or as soon as
    a sweep finds their client dead.

    A dropped ring is unmapped when the last stream writing to it lets go, so eviction never pulls
    memory from under a copy in progress.
    """

    def __init__(self, idle_s: float = 60.0):
        self.idle_s = idle_s
        self._rings: dict[tuple[str, bytes], tuple[ShmRing, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def sweep_every(self, seconds: float) -> None:
        """Sweep (below) on a background thread every `seconds` until `stop()`."""

        def run() -> None:
            while not self._stop.wait(seconds):
                self.sweep()

        threading.Thread(target=run, name="ring-sweeper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, name: str, nonce: bytes) -> ShmRing:
        """The ring `name` if it is the client's (nonce), attaching on first use; else RingUnreachable."""
        now = time.monotonic()
        with self._lock:
            for key, (_, used) in list(self._rings.items()):
                if now - used > self.idle_s:
                    del self._rings[key]
            ring = self._rings[(name, nonce)][0] if (name, nonce) in self._rings else ShmRing.attach(name, nonce)
            self._rings[(name, nonce)] = (ring, now)
            return ring

    def sweep(self) -> list[str]:
        """Drop the rings of clients that died (unmapped once no stream writes to them), then remove the segments
        of dead clients from /dev/shm; returns the names removed."""
        with self._lock:
            for key, (ring, _) in list(self._rings.items()):
                if ring.orphaned():
                    del self._rings[key]
                    log.info("dropped the shared-memory ring of a client that is gone", extra={"ring": ring.name})
        return sweep_orphans()


def sweep_orphans(grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Remove the `ctp-` rings in /dev/shm whose owner died (no lock held; older than `grace_s`) among those this
    process may open; returns their names."""
    try:
        names = sorted(n for n in os.listdir(_SHM_DIR) if _OWNED.fullmatch(n))
    except OSError:
        return []
    removed = []
    for name in names:
        if _owner_gone(name, grace_s, unlink=True):
            removed.append(name)
    if removed:
        log.info(
            "removed %d shared-memory ring(s) left by dead clients: %s",
            len(removed),
            ", ".join(removed),
            extra={"rings": removed},
        )
    return removed


def _owner_gone(name: str, grace_s: float, unlink: bool = False) -> bool | None:
    """True when nobody holds the owner's lock on /dev/shm/`name` (then removed, with `unlink`), None when the
    segment is gone, False while its owner lives, it is younger than `grace_s`, or this process cannot tell."""
    path = os.path.join(_SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:  # another user's: not ours to judge
        return False
    try:
        if time.time() - os.fstat(fd).st_mtime < grace_s:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
    finally:
        os.close(fd)  # releases the probe's lock


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
