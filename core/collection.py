"""The collection: images added, replaced and deleted while serving, ``<home>/collection/``.

    <home>/collection/log    append-only records, one per acknowledged write; nothing else

A bundle's index holds the trainer's images (ids ``0..N-1``); this log holds what users
changed since. An id a record names overrides the bundle's item of that id, in every
model version: a put replaces it (or adds a new one), a delete hides it. Replaying the log
from the start gives the live items: the newest put of each id not deleted after it.

**Record layout** (little-endian)::

    magic    4 bytes   b"SCL1"
    length   u32       bytes of the body
    crc      u32       zlib.crc32 of the length field and the body
    body:
      kind   1 byte    b"P" (put) or b"D" (delete)
      id     u64
      mlen   u32       bytes of meta
      meta   JSON      put: {"payload", "sizes", "dim", "version", "floor"}; delete: {"floor"}
      blob   put only  for each size s in ``sizes`` the (3, s, s) uint8 pixels, then the (dim,)
                       float32 unit embedding computed under model ``version``

**What a put stores for re-embedding.** Not the upload (up to ``SIMCLR_MAX_UPLOAD_BYTES``), but
the pixels ``core.images.to_array`` makes of it -- exactly what the model sees -- at the model's
image size and at ``max(image size, REEMBED_SIZE)`` (:func:`stored_sizes`: 32 and 64 px for a
32 px model, 3 + 12 KB per item). A later model of either size embeds an item exactly as it
would embed the original upload; one of another size gets the larger copy resized
(:func:`pixels_at`: bicubic, as ``to_array`` resizes). ``/images/{id}`` shows the larger copy.

**Durability.** A write appends its whole record with one ``write`` on an ``O_APPEND``
descriptor and ``fdatasync`` s it before returning (the folder is fsynced when the log is
created), so a write that returned is on disk. A crash mid-write (``kill -9``, power loss)
can leave only the tail torn: a record cut short or, after a power loss, a tail of garbage.
Readers stop at the first record whose header, length or CRC does not check out, so a torn
tail is never read as data; the next writer truncates it (under the lock) before it appends.
A damaged record *followed by valid ones* is not a torn tail but corruption (a disk or a hand
that changed acknowledged bytes): :class:`CollectionCorrupt`, never a silent truncation.

**Several processes** (``simclr serve --workers N``) append to one log: a writer holds
``fcntl.flock`` on it while it reads the records others appended since its last read, picks
the id, appends and syncs, so ids are unique and records never interleave. Readers take no
lock: they read complete records up to the end and simply retry later from the first
incomplete one (another process may be writing it).

**Ids.** A put without an id gets ``max(every floor recorded, the highest id any record
named + 1, the writer's base size)``: never an id that was ever used, by the log or by the
bundles the writers served (a record's ``floor`` is its writer's bundle size). Ids are at most
:data:`MAX_ID` (2**53 - 1, the largest integer a JavaScript client reads exactly); once a client
has put an item at the top of the range, new ids fill the lowest never-named gap instead.

Not thread-safe: one :class:`Collection` is used by one thread at a time (the service holds a
lock around it); separate instances, in one process or several, coordinate through the lock.
The log only grows; compacting it (dropping superseded records) is left for later.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.images import to_array

log = logging.getLogger(__name__)

LOG_FILE = "log"
MAGIC = b"SCL1"
HEADER = struct.Struct("<4sII")  # magic, body length, crc32
BODY_HEAD = struct.Struct("<cQI")  # kind, id, meta length
PUT, DELETE = b"P", b"D"
MAX_BODY = 1 << 28  # a length beyond this is garbage, not a record
MAX_ID = 2**53 - 1
MAX_PAYLOAD_BYTES = 16 * 1024  # a payload's compact JSON, UTF-8
REEMBED_SIZE = 64  # the larger stored copy: see the module docstring
_SCAN_CHUNK = 1 << 20

_UMASK = os.umask(0)
os.umask(_UMASK)
_sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class CollectionError(RuntimeError):
    """The collection cannot be read or written; the message says why."""


class CollectionCorrupt(CollectionError):
    """Acknowledged records were damaged (not a torn tail): nothing is truncated or written."""


class PayloadError(ValueError):
    """A payload that is not a JSON object of at most ``MAX_PAYLOAD_BYTES``; the message says why."""


def _reject_constant(name: str) -> None:
    raise PayloadError(f"{name} is not valid JSON")


def parse_payload(text: str) -> dict[str, Any]:
    """A payload sent as JSON text: an object of at most :data:`MAX_PAYLOAD_BYTES` (compact)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except PayloadError:
        raise
    except ValueError as e:
        raise PayloadError(f"not valid JSON: {e}") from e
    check_payload(value)
    return value


def check_payload(payload: Any) -> str:
    """``payload``'s compact JSON; :class:`PayloadError` unless it is an object within the size limit."""
    if not isinstance(payload, dict):
        raise PayloadError(f"must be a JSON object ({{...}}), got {type(payload).__name__ if payload is not None else 'null'}")
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PayloadError(f"not JSON-serialisable: {e}") from e
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{size} bytes as compact JSON, over the limit of {MAX_PAYLOAD_BYTES}")
    return text


def stored_sizes(image_size: int) -> tuple[int, ...]:
    """The sizes a put stores its pixels at, for a model of ``image_size`` px (module docstring)."""
    return tuple(sorted({image_size, max(image_size, REEMBED_SIZE)}))


@dataclass(frozen=True, eq=False)
class PutRecord:
    """A put as read back. ``offset`` (where the record starts in the log) identifies this revision."""

    id: int
    payload: dict[str, Any] | None
    sizes: tuple[int, ...]
    version: str  # the model version ``embedding`` was computed under
    embedding: np.ndarray = field(repr=False)  # (dim,) float32
    floor: int
    offset: int
    pixels_at: int  # log offset of the first stored copy


@dataclass(frozen=True, eq=False)
class DeleteRecord:
    id: int
    floor: int
    offset: int


Record = PutRecord | DeleteRecord


@dataclass(frozen=True)
class Change:
    """What one write did: its record (None: a delete of an id that is not live wrote nothing) and
    whether it created the id (else replaced it). What it applied besides (the records other
    writers appended since the last read): ``Collection.take_applied``."""

    record: Record | None
    created: bool


def encode_put(item_id: int, payload: dict[str, Any] | None, copies: Mapping[int, np.ndarray], version: str,
               embedding: np.ndarray, floor: int) -> bytes:
    """A put record's body. ``copies``: size -> ``(3, size, size)`` uint8 pixels."""
    if not 0 <= item_id <= MAX_ID:
        raise ValueError(f"ids are 0..{MAX_ID}, got {item_id}")
    vector = np.ascontiguousarray(embedding, dtype="<f4").reshape(-1)
    sizes = sorted(copies)
    for s in sizes:
        if copies[s].shape != (3, s, s) or copies[s].dtype != np.uint8:
            raise ValueError(f"the {s} px copy must be (3, {s}, {s}) uint8, got {copies[s].shape} {copies[s].dtype}")
    meta = {"payload": payload, "sizes": sizes, "dim": int(vector.size), "version": version, "floor": int(floor)}
    meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    parts = [BODY_HEAD.pack(PUT, item_id, len(meta_bytes)), meta_bytes]
    parts += [np.ascontiguousarray(copies[s]).tobytes() for s in sizes]
    parts.append(vector.tobytes())
    return b"".join(parts)


def encode_delete(item_id: int, floor: int) -> bytes:
    meta = json.dumps({"floor": int(floor)}).encode()
    return BODY_HEAD.pack(DELETE, item_id, len(meta)) + meta


def frame(body: bytes) -> bytes:
    """A body with its header: magic, length, CRC32 of length and body."""
    length = struct.pack("<I", len(body))
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body, zlib.crc32(length))) + body


def _checked(head: bytes, body: bytes) -> bool:
    magic, length, crc = HEADER.unpack(head)
    return magic == MAGIC and len(body) == length and zlib.crc32(body, zlib.crc32(head[4:8])) == crc


def decode(body: bytes, offset: int) -> Record:
    """A checked body back as a record (``offset``: where its header starts). Raises
    :class:`CollectionCorrupt` for a body whose CRC matched yet does not parse."""
    try:
        kind, item_id, mlen = BODY_HEAD.unpack_from(body)
        meta = json.loads(body[BODY_HEAD.size : BODY_HEAD.size + mlen])
        if kind == DELETE:
            return DeleteRecord(item_id, int(meta.get("floor", 0)), offset)
        if kind != PUT:
            raise ValueError(f"unknown record kind {kind!r}")
        sizes, dim = tuple(int(s) for s in meta["sizes"]), int(meta["dim"])
        start = BODY_HEAD.size + mlen
        pixels = sum(3 * s * s for s in sizes)
        if len(body) != start + pixels + 4 * dim:
            raise ValueError(f"a put of {len(body)} bytes, expected {start + pixels + 4 * dim}")
        embedding = np.frombuffer(body, dtype="<f4", count=dim, offset=start + pixels).astype(np.float32)
        return PutRecord(item_id, meta["payload"], sizes, str(meta["version"]), embedding, int(meta["floor"]), offset,
                         offset + HEADER.size + start)
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise CollectionCorrupt(f"the record at byte {offset} of the collection log passes its CRC but does not parse: {e}") from e


class Collection:
    """The log of one ``<home>/collection/`` folder, and its records replayed: the live items.

    ``catch_up`` reads what was appended since the last read (readers: a poller, an export);
    ``put`` and ``delete`` are the writes (locked, synced). All three apply what they read, so
    ``puts`` (id -> newest live put) and ``named`` (every id a record names) are up to date
    with the log up to ``offset``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOG_FILE
        self.puts: dict[int, PutRecord] = {}
        self.named: set[int] = set()
        self.max_id = -1
        self.floor = 0
        self.offset = 0  # bytes of the log read and applied: the start of the next record
        self.seen = (0, 0)  # the log's (size, mtime) when last read: see ``changed``
        self._applied: list[Record] = []  # see ``take_applied``
        # Both stay open until ``close``: ``pixels`` reads through them from any thread.
        self._rfd: int | None = None  # read-only, once the log exists
        self._wfd: int | None = None  # append, for writers

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd is not None:
                os.close(fd)
        self._rfd = self._wfd = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------

    def _reader(self) -> int | None:
        if self._wfd is not None:
            return self._wfd
        if self._rfd is None:
            try:
                self._rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return self._rfd

    def changed(self) -> bool:
        """Whether the log changed since it was last read (a ``stat``: cheap enough for a poller to call
        on an event loop). A torn tail left as it was does not count; its truncation does."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_size, st.st_mtime_ns) != self.seen

    def take_applied(self) -> list[Record]:
        """The records applied since the last call, in log order, whatever applied them (a read, a
        write, or a write that failed after reading what others appended)."""
        out, self._applied = self._applied, []
        return out

    def _read(self, fd: int) -> tuple[list[Record], int, int]:
        """Complete, checked records from ``offset`` on: ``(records, end of the last one, file size)``.
        Raises :class:`CollectionCorrupt` when a bad record is followed by a valid one."""
        st = os.fstat(fd)
        size, self.seen = st.st_size, (st.st_size, st.st_mtime_ns)
        pos, out = self.offset, []
        while pos + HEADER.size <= size:
            head = os.pread(fd, HEADER.size, pos)
            magic, length, _ = HEADER.unpack(head)
            if magic != MAGIC or length > MAX_BODY or pos + HEADER.size + length > size:
                break
            body = os.pread(fd, length, pos + HEADER.size)
            if not _checked(head, body):
                break
            out.append(decode(body, pos))
            pos += HEADER.size + length
        if pos < size and (later := self._valid_record_after(fd, pos, size)) is not None:
            raise CollectionCorrupt(
                f"the collection log {self.path} is damaged at byte {pos}: the record there does not check out, yet a "
                f"valid one follows at byte {later}. Acknowledged writes may be lost: restore the log from a backup, or "
                f"truncate it to {pos} bytes to keep what precedes the damage"
            )
        return out, pos, size

    def _valid_record_after(self, fd: int, start: int, size: int) -> int | None:
        """The offset of a checked record after ``start``, if any (to tell a torn tail from corruption)."""
        pos = start + 1
        while pos < size:
            chunk = os.pread(fd, min(_SCAN_CHUNK + len(MAGIC), size - pos), pos)
            i = chunk.find(MAGIC)
            while i >= 0:
                at = pos + i
                head = os.pread(fd, HEADER.size, at)
                if len(head) == HEADER.size:
                    _, length, _ = HEADER.unpack(head)
                    if length <= MAX_BODY and at + HEADER.size + length <= size and _checked(head, os.pread(fd, length, at + HEADER.size)):
                        return at
                i = chunk.find(MAGIC, i + 1)
            pos += _SCAN_CHUNK
        return None

    def _apply(self, record: Record) -> None:
        self._applied.append(record)
        self.named.add(record.id)
        self.max_id = max(self.max_id, record.id)
        self.floor = max(self.floor, record.floor)
        if isinstance(record, PutRecord):
            self.puts[record.id] = record
        else:
            self.puts.pop(record.id, None)

    def catch_up(self) -> list[Record]:
        """Read and apply the records appended since the last read (none while there is no log).
        Stops before an incomplete or torn record: it is read once complete (a writer in another
        process), or truncated by the next write (a writer that died)."""
        fd = self._reader()
        if fd is None:
            return []
        records, end, _ = self._read(fd)
        for r in records:
            self._apply(r)
        self.offset = end
        return records

    def pixels(self, record: PutRecord, size: int) -> np.ndarray:
        """The stored ``(3, size, size)`` uint8 copy of a put; ``size`` must be one of ``record.sizes``."""
        fd = self._reader()
        if fd is None:
            raise CollectionError(f"{self.path} is gone")
        at = record.pixels_at
        for s in record.sizes:
            if s == size:
                data = os.pread(fd, 3 * s * s, at)
                return np.frombuffer(data, dtype=np.uint8).reshape(3, s, s)
            at += 3 * s * s
        raise KeyError(f"item {record.id} has no {size} px copy (it has {record.sizes})")

    def pixels_at(self, record: PutRecord, size: int) -> np.ndarray:
        """A put's pixels for a model of ``size`` px: the stored copy of that size, else the largest
        one resized as ``core.images.to_array`` resizes (module docstring)."""
        if size in record.sizes:
            return self.pixels(record, size)
        largest = self.pixels(record, max(record.sizes))
        return to_array(Image.fromarray(np.ascontiguousarray(largest.transpose(1, 2, 0))), size)

    # --- writing ---------------------------------------------------------------------------------

    def _writer(self) -> int:
        if self._wfd is None:
            created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            if created:
                _sync_dir(self.folder.parent)
            existed = self.path.exists()
            self._wfd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_UMASK)
            if not existed:
                _sync_dir(self.folder)  # the log's name is durable before any record in it is acknowledged
        return self._wfd

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The log locked against every other writer, read to its end (a torn tail truncated)."""
        fd = self._writer()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            records, end, size = self._read(fd)
            for r in records:
                self._apply(r)
            self.offset = end
            if end < size:  # _read raised if a valid record followed: this is a write that never finished
                log.warning("collection log %s: dropping a torn tail of %d bytes at byte %d (a write that was never acknowledged)",
                            self.path, size - end, end)
                os.ftruncate(fd, end)
                _sync(fd)
                st = os.fstat(fd)
                self.seen = (st.st_size, st.st_mtime_ns)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _append(self, fd: int, body: bytes) -> int:
        data = frame(body)
        at = self.offset
        if os.fstat(fd).st_size != at:  # only a writer that ignores the lock could cause this
            raise CollectionError(f"{self.path} changed under the lock: {os.fstat(fd).st_size} bytes, expected {at}")
        written = os.write(fd, data)
        if written != len(data):  # a full disk: the short record is a torn tail for the next writer
            raise CollectionError(f"could not append to {self.path}: wrote {written} of {len(data)} bytes")
        _sync(fd)
        self.offset = at + len(data)
        st = os.fstat(fd)  # still under the lock: nobody else appended
        self.seen = (st.st_size, st.st_mtime_ns)
        return at

    def exists(self, item_id: int, base_size: int) -> bool:
        """Whether ``item_id`` is live: a put's, or the bundle's (``base_size`` items) and never named since."""
        return item_id in self.puts or (0 <= item_id < base_size and item_id not in self.named)

    def next_id(self, base_size: int) -> int:
        """The id a put without one gets: after every id used so far, or, once a client has taken an id
        near :data:`MAX_ID`, the lowest id above the bundles' that no record ever named (ids are never reused)."""
        after = max(self.floor, self.max_id + 1, base_size)
        if after <= MAX_ID:
            return after
        item_id = max(self.floor, base_size)
        while item_id in self.named:  # a gap exists unless MAX_ID ids were named; the scan stops at the first
            item_id += 1
        return item_id

    def put(self, item_id: int | None, payload: dict[str, Any] | None, copies: Mapping[int, np.ndarray], version: str,
            embedding: np.ndarray, base_size: int) -> Change:
        """Add an item (``item_id`` None: the next free id) or replace item ``item_id``; on disk when it returns."""
        if payload is not None:
            check_payload(payload)
        with self._locked() as fd:
            created = item_id is None or not self.exists(item_id, base_size)
            if item_id is None:
                item_id = self.next_id(base_size)
                if item_id > MAX_ID:
                    raise CollectionError(f"no id left: ids are at most {MAX_ID}")
            body = encode_put(item_id, payload, copies, version, embedding, base_size)
            record = decode(body, self._append(fd, body))
            self._apply(record)
        return Change(record, created)

    def delete(self, item_id: int, base_size: int) -> Change:
        """Delete live item ``item_id``, on disk when it returns; ``record`` None (nothing written) if it is not live."""
        with self._locked() as fd:
            if not self.exists(item_id, base_size):
                return Change(None, False)
            body = encode_delete(item_id, base_size)
            record = decode(body, self._append(fd, body))
            self._apply(record)
        return Change(record, False)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
