"""The collection as one server process serves it: immutable views of the bundle plus the log.

``core.collection`` owns the log on disk (records, CRCs, the lock, fsync); this module turns it
into what requests read, and is the only writer of it in the service.

**Views.** A :class:`View` is one loaded bundle plus the collection as of one point of the log,
for that bundle's model version: the added items' vectors (computed by that version's encoder),
their payloads, and which of the bundle's own items are hidden (deleted, or replaced by a put).
A view never changes once made. The store (``service.state.ModelStore``) holds the current one
in ``store.view``; a request takes it once and answers from it to the end, as it takes
``store.bundle``. Every write, every batch of records another process appended and every new
model version makes a new view that replaces the old one with one assignment (under this
module's lock, so views are installed in log order). A view with nothing added or hidden is
``plain``: the routes then run their code of before the collection, after that one check.

**Searching a view** (:meth:`View.search`, :meth:`View.neighbors_of`): the bundle's FAISS
index (exact, HNSW or IVF) with the hidden ids excluded by an ID selector -- tombstones: an
approximate index's walk is widened by the hidden fraction to find as many live hits
(``service.search_parts.filtered_search``) -- and the added items' vectors, merged by score.
``GET /neighbors?id=`` of a bundle item keeps its precomputed table (``service.frozen``): the
table's hits minus the hidden ones, merged with the added items' search; only when the hidden ids
leave fewer than ``k`` of its 101 hits does it search the index.

**The added items' vectors** are rows appended to a buffer that successive views share: a view
reads only its first ``n`` rows, which never change once written, and has its own copy of the
mask of dead rows (items since replaced or deleted). A full buffer is not grown in place: the
live rows are copied to a new one twice their number, and the old views keep the old buffer.
A write thus costs amortised O(dim) for its vector, plus copies of the id map and the masks
(O(items) bytes, not O(items x dim)). The rows are searched exactly until that costs more than
:data:`SEAL_MACS` per query (64k rows of 128 dimensions); then a thread builds an HNSW index over
the rows written so far (``service.search_parts.Sealed``) without the lock, and later views
search it plus an exact scan of the rows after it; a compacted buffer drops it and the next
write past the threshold builds a new one. Publishing a model rebuilds everything.

**Across processes** (``--workers N``): each process applies its own writes at once, and
:func:`follow` checks the log every :data:`POLL_INTERVAL` (0.2 s) with one ``stat`` on the
event loop, reading and applying what other processes appended (in the threadpool) when it
changed. An acknowledged write is therefore visible to every process's searches within
0.2 s plus the time to read and apply it (well under 10 ms for a few records of the model's
own version; a record written under another version -- a process that already switched to
a newly published one -- is embedded first, a forward pass): within one second. The one
exception is the end of a switch to a new model version, which holds the lock while it embeds
the items written during the switch (see below); their visibility then waits for that.

**A new model version** (:meth:`LiveCollection.switch`, in the thread that loads the bundle,
while the old version serves): every live added item whose stored vector is of another
version is embedded with the new encoder from its stored pixels (``core.collection``), without
the lock, so the old version keeps answering and accepting writes. Then, under the lock, the
items written meanwhile are embedded too, and the new view is installed with the new bundle.
So a view never mixes two encoders' vectors, and no request fails or waits for the switch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from core import models
from core.bundles import LoadedBundle
from core.collection import Collection, CollectionCorrupt, CollectionError, PutRecord, Record
from index.faiss_index import AUTO_EXACT_MAX_MACS, HNSW, build, reconstruct, search
from service.search_parts import Rows, Sealed, filtered_search, inline_macs, merge

log = logging.getLogger("service")

# An HNSW index over the added items (Sealed) is built in the background once the rows searched
# exactly cost more than this per query: 64k rows of 128 dimensions, as index.faiss_index's auto rule.
SEAL_MACS = AUTO_EXACT_MAX_MACS
SEAL_RECALL = 0.95
POLL_INTERVAL = 0.2  # seconds between checks of the log for other processes' writes (the visibility bound)
EMBED_CHUNK = 512  # stored items embedded per forward pass when a version switches


def added_source(item_id: int) -> str:
    """The ``source`` of an added item in neighbour answers (a bundle item's is its file)."""
    return f"items/{item_id}"


@dataclass(frozen=True, eq=False)
class Added:
    """A live added item in a view: its newest put and the row of its vector."""

    record: PutRecord
    row: int


@dataclass(frozen=True, eq=False)
class View:
    """One bundle with the collection, for its model version; never changed once made (module docstring)."""

    bundle: LoadedBundle
    added: Mapping[int, Added]  # live added items (replacements of bundle items included), by id
    rows: Rows
    hidden: np.ndarray | None  # (N,) bool: the bundle's items not served (deleted or replaced); None: none
    n_hidden: int
    collection: Collection | None  # reads the added items' stored pixels
    plain: bool = field(init=False)  # nothing added or hidden: the routes' code of before applies
    remote: bool = field(default=False, init=False)  # answers in memory (a QdrantView's calls go over the network)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", not self.added and self.hidden is None)

    # --- items ----------------------------------------------------------------------------------

    def is_base(self, item_id: int) -> bool:
        """Whether ``item_id`` is a bundle item this view serves (not hidden)."""
        return 0 <= item_id < self.bundle.index.ntotal and (self.hidden is None or not self.hidden[item_id])

    def has(self, item_id: int) -> bool:
        return item_id in self.added or self.is_base(item_id)

    def base_payload(self, item_id: int) -> dict[str, Any]:
        """A bundle item's payload: where the trainer found it and its class (None if unlabelled)."""
        b = self.bundle
        label = int(b.labels[item_id])
        return {"source": b.sources[item_id], "label": b.label_names[label] if label >= 0 else None}

    def payload(self, item_id: int) -> dict[str, Any] | None:
        added = self.added.get(item_id)
        return added.record.payload if added is not None else self.base_payload(item_id)

    def added_payloads(self, ids: Sequence[int]) -> dict[int, dict[str, Any] | None]:
        """The payloads of the added items among ``ids`` (bundle items are described by the bundle)."""
        return {i: a.record.payload for i in ids if (a := self.added.get(i)) is not None}

    def image(self, item_id: int) -> tuple[np.ndarray, str]:
        """A live item's pixels for display ``(3, H, W)`` and what identifies them (for an ETag).
        An added item shows its larger stored copy (``core.collection``)."""
        added = self.added.get(item_id)
        if added is None:
            return self.bundle.pixels[item_id], f"{self.bundle.version}-{item_id}"
        assert self.collection is not None
        record = added.record
        return self.collection.pixels(record, max(record.sizes)), f"item-{item_id}-{record.offset}"

    @property
    def count(self) -> int:
        """Live items in all."""
        return self.bundle.index.ntotal - self.n_hidden + len(self.added)

    def page(self, offset: int, limit: int) -> list[int]:
        """Live ids ``offset .. offset + limit - 1`` in ascending order. The first call on a view sorts
        every live id (:attr:`live_ids`): O(items log items), run it off the event loop for big ones
        unless :meth:`has_page_cache`."""
        return self.live_ids[offset : offset + limit].tolist()

    def has_page_cache(self) -> bool:
        return "live_ids" in self.__dict__

    @cached_property
    def live_ids(self) -> np.ndarray:
        """Every live id, ascending (``GET /items``); computed once per view, on first use."""
        n = self.bundle.index.ntotal
        base = np.arange(n, dtype=np.int64) if self.hidden is None else np.flatnonzero(~self.hidden).astype(np.int64)
        if not self.added:
            return base
        return np.sort(np.concatenate([base, np.fromiter(self.added, dtype=np.int64, count=len(self.added))]))

    # --- search ---------------------------------------------------------------------------------

    def vector(self, item_id: int) -> np.ndarray:
        """A live item's vector ``(D,)`` under this view's version."""
        added = self.added.get(item_id)
        if added is not None:
            return self.rows.vectors[added.row]
        return reconstruct(self.bundle.index, item_id)

    @cached_property
    def _base_selector(self) -> tuple[faiss.IDSelector, np.ndarray, float] | None:
        """A FAISS selector of the bundle items not hidden, the bitmap it reads (it must outlive the
        selector), and the hidden fraction's widening of an approximate search (``search_parameters``)."""
        if self.hidden is None:
            return None
        bitmap = np.packbits(~self.hidden, bitorder="little")  # bit i set: id i may be returned
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n: the bitmap's size in bytes
        n = self.bundle.index.ntotal
        return selector, bitmap, n / max(1, n - self.n_hidden)

    def search_base(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` served bundle items for one ``(D,)`` query: ``(scores, ids)``, -1 padded."""
        index = self.bundle.index
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._base_selector is None:
            scores, ids = search(index, q, k)
            return scores[0], ids[0]
        kk = min(k, index.ntotal - self.n_hidden)
        if kk <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        selector, _, widen = self._base_selector
        return filtered_search(index, q, kk, selector, widen)

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` live items (bundle and added) for one ``(D,)`` query, without ``exclude``. Blocking:
        costs about :meth:`search_macs`."""
        want = k + (exclude is not None)
        return merge([self.search_base(query, want), self.rows.search(query, want)], k, exclude)

    def search_macs(self) -> int:
        """Multiply-adds of :meth:`search`: the index's search and the added vectors scanned once."""
        return inline_macs(self.bundle.index) + self.rows.search_macs()

    def _table_hits(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Bundle item ``item_id``'s precomputed hits minus the hidden ones, or None when they will not
        do: no table, an added item, or so many of its hits hidden that fewer than ``k`` others remain
        while the table does not hold the whole index. A few microseconds (a mask over 101 entries)."""
        table = self.bundle.id_neighbors
        if table is None or item_id in self.added:
            return None
        scores, ids = table[0][item_id], table[1][item_id]
        if self.hidden is None:
            return scores, ids
        keep = ~self.hidden[ids]
        if int(keep.sum()) < k + 1 and len(ids) < self.bundle.index.ntotal:
            return None
        return scores[keep], ids[keep]

    def neighbors_of(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` live items for live item ``item_id``, without itself: the bundle's neighbour
        table merged with the added items when the table will do (``_table_hits``), else a search.
        Blocking: costs about :meth:`neighbors_macs`."""
        found = self._table_hits(item_id, k)
        query = self.vector(item_id)
        if found is None:
            return self.search(query, k, exclude=item_id)
        return merge([found, self.rows.search(query, k + 1)], k, exclude=item_id)

    def neighbors_macs(self, item_id: int, k: int) -> int:
        """Multiply-adds of :meth:`neighbors_of`: the added vectors, plus the index unless the table will do."""
        if self._table_hits(item_id, k) is None:
            return self.search_macs()
        return len(self.rows.ids) * self.bundle.index.d


@dataclass(frozen=True)
class Written:
    """What ``POST /items`` answers: the id, whether it was created (201) or replaced (200), and the
    version the item is now searched under."""

    id: int
    created: bool
    model_version: str


def embed_records(bundle: LoadedBundle, collection: Collection, records: Sequence[PutRecord]) -> np.ndarray:
    """The unit vectors ``(len(records), D)`` of stored items under ``bundle``'s encoder, from their stored
    pixels at its image size, in chunks. Blocking (forward passes): the loader, poller or writer thread."""
    dim, size = bundle.index.d, bundle.manifest.image_size
    out = np.empty((len(records), dim), dtype=np.float32)
    norm = bundle.manifest.normalization
    for start in range(0, len(records), EMBED_CHUNK):
        chunk = records[start : start + EMBED_CHUNK]
        pixels = torch.from_numpy(np.stack([collection.pixels_at(r, size) for r in chunk]))
        out[start : start + len(chunk)] = models.embed(bundle.encoder, pixels, batch_size=len(chunk), mean=norm.mean, std=norm.std).numpy()
    return out


class _VersionState:
    """The mutable master copy of one version's view: what the lock protects; :meth:`view` snapshots it."""

    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.size = bundle.index.ntotal
        self.dim = bundle.index.d
        self.hidden = np.zeros(self.size, dtype=bool)
        self.n_hidden = 0
        self.added: dict[int, Added] = {}
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self.sealed: Sealed | None = None  # an HNSW index over the first rows of _vectors (LiveCollection.seal)
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._n = self._dead = 0

    def apply(self, record: Record, vector: np.ndarray | None) -> None:
        """Apply one record (in log order); ``vector``: a put's under this version."""
        i = record.id
        if i < self.size and not self.hidden[i]:
            self.hidden[i] = True
            self.n_hidden += 1
        old = self.added.pop(i, None)
        if old is not None:
            self._alive[old.row] = False
            self._dead += 1
        if isinstance(record, PutRecord):
            if self._n == len(self._ids):
                self._grow()
            row = self._n
            self._vectors[row], self._ids[row], self._alive[row] = vector, i, True
            self._n += 1
            self.added[i] = Added(record, row)

    def _grow(self) -> None:
        """New buffers for twice the live rows (at least 64), the live rows copied: the views made
        so far keep the old buffers, whose rows they read are never written again."""
        live = np.flatnonzero(self._alive[: self._n])
        cap = max(64, 2 * len(live))
        vectors, ids, alive = np.empty((cap, self.dim), dtype=np.float32), np.empty(cap, dtype=np.int64), np.zeros(cap, dtype=bool)
        vectors[: len(live)], ids[: len(live)], alive[: len(live)] = self._vectors[live], self._ids[live], True
        new_row = np.full(self._n, -1, dtype=np.int64)
        new_row[live] = np.arange(len(live))
        self.added = {i: Added(a.record, int(new_row[a.row])) for i, a in self.added.items()}
        self._vectors, self._ids, self._alive = vectors, ids, alive
        self._n, self._dead = len(live), 0
        self.sealed = None  # it indexed the old buffer's rows; a new one is built when the tail is large again

    def unsealed_macs(self) -> int:
        """Multiply-adds of an exact search over the rows the sealed index does not cover."""
        return (self._n - (self.sealed.rows if self.sealed is not None else 0)) * self.dim

    def seal_source(self) -> tuple[np.ndarray, int]:
        """What a sealed index would cover: the buffer and its rows written so far (never written again)."""
        return self._vectors, self._n

    def apply_all(self, records: Sequence[Record], collection: Collection, known: Mapping[int, np.ndarray] | None = None) -> None:
        """Apply records in log order. A put's vector: ``known[record.offset]``, else the one stored with
        it when it is of this version, else computed now (one forward pass for all such puts)."""
        known = dict(known or {})
        todo = [r for r in records if isinstance(r, PutRecord) and r.version != self.version and r.offset not in known]
        if todo:
            known.update(zip((r.offset for r in todo), embed_records(self.bundle, collection, todo)))
        for r in records:
            self.apply(r, (known.get(r.offset, r.embedding) if isinstance(r, PutRecord) else None))

    def view(self, collection: Collection) -> View:
        n = self._n
        vectors = self._vectors[:n]
        vectors.flags.writeable = False
        rows = Rows(vectors, self._ids[:n], self._alive[:n].copy() if self._dead else None, n - self._dead, self.sealed)
        hidden = self.hidden.copy() if self.n_hidden else None
        return View(self.bundle, dict(self.added), rows, hidden, self.n_hidden, collection)


class LiveCollection:
    """One process's collection: the log (``core.collection.Collection``), the view of the version
    being served, and the writes. ``publish(view)`` installs each new view (the store's)."""

    def __init__(self, folder: Path, publish: Callable[[View], None]) -> None:
        self.log = Collection(folder)
        self.publish = publish
        self.error: str | None = None  # why the log cannot be read or written (a damaged log)
        self._state: _VersionState | None = None
        self._lock = threading.Lock()
        self._sealing = False  # a seal thread is running

    # --- under the lock ---------------------------------------------------------------------------

    def _settle(self) -> None:
        """Apply to the served version whatever the log applied (read or written), and publish the view."""
        records = self.log.take_applied()
        if records and self._state is not None:
            self._state.apply_all(records, self.log)
            self.publish(self._state.view(self.log))
            self._seal_if_due()

    def _seal_if_due(self) -> None:
        """Start building a sealed index in the background when the exactly-searched rows grew past
        :data:`SEAL_MACS` (and none is being built)."""
        state = self._state
        if state is None or self._sealing or state.unsealed_macs() <= SEAL_MACS:
            return
        self._sealing = True
        buffer, rows = state.seal_source()
        threading.Thread(target=self._seal, args=(state, buffer, rows), name="seal", daemon=True).start()

    def _seal(self, state: _VersionState, buffer: np.ndarray, rows: int) -> None:
        """Build an HNSW index over ``buffer[:rows]`` without the lock (searches and writes go on), then
        install it unless the buffer was compacted or the version replaced meanwhile."""
        try:
            built = build(buffer[:rows], HNSW, SEAL_RECALL)
            with self._lock:
                if self._state is state and state.seal_source()[0] is buffer:
                    state.sealed = Sealed(buffer, rows, built.index)
                    self.publish(state.view(self.log))
                    log.info("sealed %d added items into an HNSW index (%s, recall@10 %.3f)", rows, built.params, built.recall_at_10)
        except Exception:  # noqa: BLE001 - the exact tail keeps serving; the next write tries again
            log.exception("building the added items' index failed")
        finally:
            with self._lock:
                self._sealing = False
                self._seal_if_due()

    def _fail(self, e: CollectionError) -> None:
        if self.error is None:
            log.error("the collection cannot be used beyond what was read so far: %s", e)
        self.error = str(e)

    def _catch_up(self) -> None:
        if self.error is not None:
            return
        try:
            self.log.catch_up()
        except CollectionCorrupt as e:
            self._fail(e)
        finally:
            self._settle()

    def _writable(self) -> _VersionState:
        if self.error is not None:
            raise CollectionError(f"writes are refused: {self.error}")
        if self._state is None:
            raise CollectionError("no model is loaded yet")
        return self._state

    # --- the entry points (blocking: threadpool, loader thread) ---------------------------------

    def changed(self) -> bool:
        """Whether the log changed since it was last read: one ``stat``, for the poller on the event loop."""
        return self._state is not None and self.error is None and self.log.changed()

    def sync(self) -> None:
        """Read and apply what other processes appended; publish the new view if anything changed."""
        with self._lock:
            if self._state is not None:
                self._catch_up()

    def switch(self, bundle: LoadedBundle) -> None:
        """Serve ``bundle`` (a new model version): embed the live added items with its encoder, then
        install its view (and so the bundle) in one step. The version being replaced keeps serving and
        accepting writes meanwhile. Raises if the items cannot be embedded (the store keeps the old version)."""
        with self._lock:
            self._catch_up()
            todo = [r for r in self.log.puts.values() if r.version != bundle.version]
        vectors = embed_records(bundle, self.log, todo) if todo else np.empty((0, bundle.index.d), dtype=np.float32)
        known = dict(zip((r.offset for r in todo), vectors))
        with self._lock:
            self._catch_up()
            state = _VersionState(bundle)
            hidden = [i for i in self.log.named if i < state.size and i not in self.log.puts]  # deleted bundle items
            state.apply_all(sorted(self.log.puts.values(), key=lambda r: r.offset), self.log, known)
            for i in hidden:
                state.hidden[i] = True
            state.n_hidden = int(state.hidden.sum())
            self._state = state
            self.publish(state.view(self.log))
            self._seal_if_due()
        if todo:
            log.info("embedded %d collection items with model %s before switching to it", len(todo), bundle.version)

    def put(self, item_id: int | None, payload: dict[str, Any] | None, copies: Mapping[int, np.ndarray], version: str,
            vector: np.ndarray) -> Written:
        """Add or replace an item (``vector``: computed under ``version``); on disk and in this process's
        view when it returns. Raises ``CollectionError`` when writes are refused (503)."""
        with self._lock:
            state = self._writable()
            try:
                change = self.log.put(item_id, payload, copies, version, vector, state.size)
            except CollectionCorrupt as e:
                self._fail(e)
                raise
            finally:
                self._settle()
            assert change.record is not None
            return Written(change.record.id, change.created, self._state.version if self._state else version)

    def delete(self, item_id: int) -> str | None:
        """Delete live item ``item_id``; on disk and in this process's view when it returns. The version
        served, or None if the id is not live (404)."""
        with self._lock:
            state = self._writable()
            try:
                change = self.log.delete(item_id, state.size)
            except CollectionCorrupt as e:
                self._fail(e)
                raise
            finally:
                self._settle()
            return None if change.record is None else state.version

    def close(self) -> None:
        with self._lock:
            self.log.close()


async def follow(collection: LiveCollection, interval: float = POLL_INTERVAL) -> None:
    """Apply other processes' writes as they land: a ``stat`` of the log every ``interval`` seconds on the
    event loop, the reading and applying in the threadpool when it changed (module docstring: the bound)."""
    while True:
        await asyncio.sleep(interval)
        try:
            if collection.changed():
                await run_in_threadpool(collection.sync)
        except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
            log.exception("reading the collection log failed")
