"""The collection on Qdrant (``SIMCLR_INDEX_BACKEND=qdrant``): one search cluster shared by every replica.

FAISS in each process (``service.collection``) is the embedded default; with this backend the
items and their vectors live in Qdrant, which shards and replicates them over machines, and every
service replica (on any machine) searches and writes the same collection. The HTTP API and its
guarantees are the same: every item carries its payload, an acknowledged write is stored
(Qdrant's ``wait=True``: in its write-ahead log) and searched at once by every replica, a deleted
item is never answered again, and a new model version switches with zero failed requests.

**Collections.** ``<name>-items`` (``SIMCLR_QDRANT_COLLECTION``, default ``simclr``) is the durable
record of the collection, independent of any model: per added item its payload and its stored
pixels (PNG, the sizes ``core.collection.stored_sizes`` keeps), per deleted id a tombstone. Each
model version has its own searchable collection ``<name>-<version>``: the bundle's items (their
vectors read back from the bundle's FAISS index, payload ``{"source", "label"}``) minus the
tombstones, plus every added item embedded by that version's encoder from its stored pixels. The
alias ``<name>`` points at the newest version's collection (for tools and dashboards); requests
use the collection of the version their view holds, so an answer's ``model_version`` is always
the version that searched.

**A new version** (:meth:`QdrantCollection.switch`, in the loader thread while the old version
serves): the first replica to load it creates and fills its collection (other replicas wait for
the ``<name>-<version>.ready`` alias that marks it filled), re-embeds what was written meanwhile,
and moves the alias in one ``update_collection_aliases`` call; the view is installed after that.
Collections of versions before the previous one are dropped. While replicas run different
versions (within their reload interval of each other), an item written through a replica still on
the old version reaches the new version's collection when that replica switches: it re-applies
every record written in the minute before its switch (:data:`CATCH_UP_NS`). A replica that dies
while filling leaves a collection without its ``.ready`` alias: the others wait
:data:`READY_WAIT` for it, then refuse the version (the old one keeps serving) until it is
published again.

**Ids.** Bundle items keep their row numbers; an added item without an explicit id gets a random
id in ``[2**32, 2**53)``: replicas share no counter, and a random id in a 2**53 space is unique in
practice (checked against the items collection before it is used).

**Blocking.** Every method here is a network call (or, in embedded local mode for tests and single
machines, a search in this process): the routes call them in the threadpool or the model thread.
The embedded mode is not safe under concurrent calls (its points live in unlocked numpy arrays
and one SQLite connection): :class:`SerializedClient` makes its calls one at a time.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from core.bundles import LoadedBundle
from core.collection import MAX_ID, CollectionError
from core.images import to_array
from service.collection import Written
from service.model_thread import embeddings
from service.search_parts import APPROXIMATE_MACS
from service.settings import Settings

log = logging.getLogger("service")

UPLOAD_BATCH = 1024  # points per upsert while filling a version's collection
READY_WAIT = 600.0  # seconds a replica waits for another one to fill a version's collection
FIRST_NEW_ID = 2**32
CATCH_UP_NS = 60 * 10**9  # how far back a switching replica re-applies the items collection's records


def _png(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unpng(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()


def stored_pixels(record: Mapping[str, Any], size: int) -> np.ndarray:
    """An item record's pixels for a model of ``size`` px: the stored copy of that size, else the
    largest resized as ``core.collection`` resizes it (``core.images.to_array``)."""
    copies = {int(s): t for s, t in record["png"].items()}
    if size in copies:
        return _unpng(copies[size])
    largest = _unpng(copies[max(copies)])
    return to_array(Image.fromarray(np.ascontiguousarray(largest.transpose(1, 2, 0))), size)


class SerializedClient:
    """A ``QdrantClient`` whose calls run one at a time, for the embedded (``path=``) mode.

    The embedded mode keeps each collection's points in parallel numpy arrays grown without a lock:
    an upsert in one thread while another thread upserts or reads leaves them at different lengths,
    and every later search of that collection fails (qdrant-client issue #1193). The service calls
    the client from the threadpool, the model thread and the loader thread at once; a server-backed
    client (``url=``) is thread-safe and is used as it is.
    """

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def serialized(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return serialized


Client = QdrantClient | SerializedClient


@dataclass(frozen=True, eq=False)
class QdrantView:
    """One model version's collection in Qdrant, as requests see it (the methods a ``View`` has)."""

    bundle: LoadedBundle
    client: Client
    name: str  # the version's collection
    items_name: str  # the items collection (stored pixels)
    plain: bool = field(default=False, init=False)
    remote: bool = field(default=True, init=False)

    def _point(self, item_id: int, vectors: bool = False) -> qm.Record | None:
        found = self.client.retrieve(self.name, [item_id], with_payload=True, with_vectors=vectors) if 0 <= item_id <= MAX_ID else []
        return found[0] if found else None

    def has(self, item_id: int) -> bool:
        return self._point(item_id) is not None

    def payload(self, item_id: int) -> dict[str, Any] | None:
        point = self._point(item_id)
        return None if point is None else point.payload["payload"]

    def added_payloads(self, ids: Sequence[int]) -> dict[int, dict[str, Any] | None]:
        """The payloads of the added items among ``ids`` (bundle items are described by the bundle)."""
        wanted = [int(i) for i in ids if i >= 0]
        points = self.client.retrieve(self.name, wanted, with_payload=True) if wanted else []
        return {int(p.id): p.payload["payload"] for p in points if p.payload.get("added")}

    def image(self, item_id: int) -> tuple[np.ndarray, str]:
        """The item's pixels and what identifies them; KeyError if it is gone (deleted since the caller's ``has``)."""
        point = self._point(item_id)
        if point is None:
            raise KeyError(item_id)
        if not point.payload.get("added"):
            return self.bundle.pixels[item_id], f"{self.bundle.version}-{item_id}"
        found = self.client.retrieve(self.items_name, [item_id], with_payload=True)
        if not found or found[0].payload.get("deleted"):
            raise KeyError(item_id)
        record = found[0].payload
        size = max(int(s) for s in record["png"])
        return stored_pixels(record, size), f"item-{item_id}-{record['updated']}"

    @property
    def count(self) -> int:
        return self.client.count(self.name, exact=True).count

    def has_page_cache(self) -> bool:
        return False

    def page(self, offset: int, limit: int) -> list[int]:
        """Live ids ``offset .. offset + limit - 1`` in ascending order (Qdrant scrolls by id; the
        positional offset costs reading the ids before it)."""
        ids: list[int] = []
        start: Any = None
        while len(ids) < offset + limit:
            points, start = self.client.scroll(self.name, limit=min(10_000, offset + limit - len(ids)), offset=start,
                                               with_payload=False, with_vectors=False)
            ids.extend(int(p.id) for p in points)
            if start is None:
                break
        return ids[offset : offset + limit]

    def vector(self, item_id: int) -> np.ndarray:
        point = self._point(item_id, vectors=True)
        if point is None:
            raise KeyError(item_id)
        return np.asarray(point.vector, dtype=np.float32)

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` live items for one ``(D,)`` query, without ``exclude``: ``(scores, ids)``."""
        found = self.client.query_points(self.name, query=np.asarray(query, dtype=np.float32).tolist(),
                                         limit=k + (exclude is not None), with_payload=False).points
        pairs = [(p.score, int(p.id)) for p in found if int(p.id) != exclude][:k]
        return np.array([s for s, _ in pairs], dtype=np.float32), np.array([i for _, i in pairs], dtype=np.int64)

    def neighbors_of(self, item_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search(self.vector(item_id), k, exclude=item_id)

    def neighbors_macs(self, item_id: int, k: int) -> int:
        return APPROXIMATE_MACS  # a network call: never on the event loop

    def search_macs(self) -> int:
        return APPROXIMATE_MACS


class QdrantCollection:
    """The collection's writer and version switcher on Qdrant (module docstring); ``publish(view)``
    installs each new view (the store's), as ``service.collection.LiveCollection`` does."""

    error: str | None = None

    def __init__(self, client: Client, name: str, publish: Callable[[QdrantView], None]) -> None:
        self.client, self.name, self.publish = client, name, publish
        self.items_name = f"{name}-items"
        self._view: QdrantView | None = None
        self._lock = threading.Lock()
        if not self.client.collection_exists(self.items_name):
            try:
                self.client.create_collection(self.items_name, vectors_config=qm.VectorParams(size=1, distance=qm.Distance.DOT))
                self.client.create_payload_index(self.items_name, "updated", qm.PayloadSchemaType.INTEGER)
            except Exception:  # noqa: BLE001 - another replica created it first
                if not self.client.collection_exists(self.items_name):
                    raise

    def version_name(self, version: str) -> str:
        return f"{self.name}-{version}"

    # --- switching versions ---------------------------------------------------------------------

    def _ready(self, name: str) -> bool:
        return any(a.alias_name == f"{name}.ready" for a in self.client.get_aliases().aliases)

    def _records(self, since: int | None = None) -> list[qm.Record]:
        """Every record of the items collection (puts and tombstones), or those updated since ``since`` (ns)."""
        flt = None if since is None else qm.Filter(must=[qm.FieldCondition(key="updated", range=qm.Range(gte=since))])
        out, start = [], None
        while True:
            points, start = self.client.scroll(self.items_name, scroll_filter=flt, limit=1024, offset=start, with_payload=True)
            out.extend(points)
            if start is None:
                return out

    def _apply(self, bundle: LoadedBundle, name: str, records: Sequence[qm.Record]) -> None:
        """Bring ``name`` (``bundle``'s collection) in line with item records: puts embedded, tombstones deleted."""
        puts = [r for r in records if not r.payload.get("deleted")]
        gone = [int(r.id) for r in records if r.payload.get("deleted")]
        size = bundle.manifest.image_size
        for start in range(0, len(puts), 256):
            chunk = puts[start : start + 256]
            vectors = embeddings(bundle, np.stack([stored_pixels(r.payload, size) for r in chunk]))
            self.client.upsert(name, qm.Batch(ids=[int(r.id) for r in chunk], vectors=vectors.tolist(),
                                               payloads=[{"added": True, "payload": r.payload["payload"]} for r in chunk]), wait=True)
        if gone:
            self.client.delete(name, qm.PointIdsList(points=gone), wait=True)

    def _fill(self, bundle: LoadedBundle, name: str) -> None:
        """Create ``name`` with the bundle's items minus the tombstones, plus the added items embedded."""
        index = bundle.index
        t0 = time.time_ns()
        records = self._records()
        deleted = {int(r.id) for r in records if r.payload.get("deleted")}
        names = bundle.label_names
        for start in range(0, index.ntotal, UPLOAD_BATCH):
            ids = [i for i in range(start, min(index.ntotal, start + UPLOAD_BATCH)) if i not in deleted]
            if not ids:
                continue
            vectors = np.stack([index.reconstruct(i) for i in ids])
            payloads = [{"added": False, "payload": {"source": bundle.sources[i],
                                                     "label": names[bundle.labels[i]] if bundle.labels[i] >= 0 else None}} for i in ids]
            self.client.upsert(name, qm.Batch(ids=ids, vectors=vectors.tolist(), payloads=payloads), wait=True)
        self._apply(bundle, name, records)
        self._apply(bundle, name, self._records(since=t0))  # what was written while it filled
        ready = qm.CreateAlias(collection_name=name, alias_name=f"{name}.ready")
        self.client.update_collection_aliases([qm.CreateAliasOperation(create_alias=ready)])

    def switch(self, bundle: LoadedBundle) -> None:
        """Serve ``bundle``: its collection filled (by this replica or another), the alias moved, the view installed."""
        name = self.version_name(bundle.version)
        t0 = time.time_ns()
        if not self.client.collection_exists(name):
            try:
                self.client.create_collection(name, vectors_config=qm.VectorParams(size=bundle.index.d, distance=qm.Distance.DOT))
            except Exception:
                if not self.client.collection_exists(name):
                    raise  # not "another replica created it first": Qdrant is unreachable or refused
            else:
                try:
                    self._fill(bundle, name)
                except BaseException:
                    self.client.delete_collection(name)  # never leave a half-filled collection for others to wait on
                    raise
        deadline = time.monotonic() + READY_WAIT
        while not self._ready(name):
            if time.monotonic() > deadline:
                raise CollectionError(f"Qdrant collection {name} was not filled within {READY_WAIT:.0f} s")
            time.sleep(0.5)
        with self._lock:
            # Written through replicas still on an older version since the collection was filled: the
            # replicas of one deployment reload within CATCH_UP_NS of each other (their poll is 2 s).
            self._apply(bundle, name, self._records(since=t0 - CATCH_UP_NS))
            aliases = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
            ops: list[Any] = []
            if self.name in aliases:
                ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.name)))
            ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=name, alias_name=self.name)))
            self.client.update_collection_aliases(ops)  # one call: readers of the alias never find it missing
            previous = self._view
            self._view = QdrantView(bundle, self.client, name, self.items_name)
            self.publish(self._view)
        self._drop_old(keep={name, previous.name if previous else name})

    def _drop_old(self, keep: set[str]) -> None:
        """Drop version collections other than ``keep`` (the served one and the one before it)."""
        prefix = f"{self.name}-"
        for c in self.client.get_collections().collections:
            if c.name.startswith(prefix) and c.name != self.items_name and c.name not in keep:
                self.client.delete_collection(c.name)

    # --- writes ---------------------------------------------------------------------------------

    def _new_id(self) -> int:
        while True:
            item_id = FIRST_NEW_ID + secrets.randbelow(MAX_ID - FIRST_NEW_ID)
            if not self.client.retrieve(self.items_name, [item_id]):
                return item_id

    def put(self, item_id: int | None, payload: dict[str, Any] | None, copies: Mapping[int, np.ndarray], version: str,
            vector: np.ndarray) -> Written:
        """Add or replace an item: stored (items collection) and searchable (the served version's) when it returns.
        Under the lock a switch holds while it catches up, so no write falls between the two collections."""
        with self._lock:
            return self._put(item_id, payload, copies, version, vector)

    def _put(self, item_id: int | None, payload: dict[str, Any] | None, copies: Mapping[int, np.ndarray], version: str,
             vector: np.ndarray) -> Written:
        view = self._view
        if view is None:
            raise CollectionError("no model is loaded yet")
        if item_id is None:
            item_id = self._new_id()
        created = not view.has(item_id)
        record = {"payload": payload, "png": {str(s): _png(p) for s, p in copies.items()}, "deleted": False, "updated": time.time_ns()}
        self.client.upsert(self.items_name, [qm.PointStruct(id=item_id, vector=[0.0], payload=record)], wait=True)
        if version == view.bundle.version:
            point = qm.PointStruct(id=item_id, vector=np.asarray(vector, dtype=np.float32).tolist(), payload={"added": True, "payload": payload})
            self.client.upsert(view.name, [point], wait=True)
        else:  # the vector is of a version this replica just switched away from: embed it again
            self._apply(view.bundle, view.name, self.client.retrieve(self.items_name, [item_id], with_payload=True))
        return Written(item_id, created, view.bundle.version)

    def delete(self, item_id: int) -> str | None:
        """Delete a live item (a tombstone in the items collection, the point from the served version's);
        the served version, or None if the id is not live."""
        with self._lock:
            return self._delete(item_id)

    def _delete(self, item_id: int) -> str | None:
        view = self._view
        if view is None:
            raise CollectionError("no model is loaded yet")
        if not view.has(item_id):
            return None
        record = {"payload": None, "png": {}, "deleted": True, "updated": time.time_ns()}
        self.client.upsert(self.items_name, [qm.PointStruct(id=item_id, vector=[0.0], payload=record)], wait=True)
        self.client.delete(view.name, qm.PointIdsList(points=[item_id]), wait=True)
        return view.bundle.version

    # --- what LiveCollection also answers ---------------------------------------------------------

    def changed(self) -> bool:
        return False  # nothing to follow: every replica searches Qdrant itself

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()


def connect(settings: Settings) -> Callable[[Callable[[QdrantView], None]], QdrantCollection]:
    """What ``ModelStore.use_collection`` takes: the Qdrant collection of ``settings`` (a server, or embedded)."""
    if settings.qdrant_url is not None:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = QdrantClient(url=settings.qdrant_url, api_key=key, timeout=30)
    else:
        client = SerializedClient(QdrantClient(path=str(settings.qdrant_path)))
    return lambda publish: QdrantCollection(client, settings.qdrant_collection, publish)
