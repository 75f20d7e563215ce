"""The bundle being served, swapped whole so that no request ever sees a half-loaded model.

A request reads ``store.bundle`` once, at its start (see ``deps.get_bundle``), and
uses only that reference until it answers. Replacing the attribute is a single
assignment, atomic under the GIL, so a reload can swap bundles while requests
are in flight: they finish on the old one, which is freed when the last of
them lets go.

Requests that search or read items take ``store.view`` instead: the bundle with the
collection of added and deleted items (``service.collection``), replaced whole the same
way on every write, on other processes' writes and on a new version. A new version's
view is installed together with its bundle, once the collection's items are embedded
with its encoder (``LiveCollection.switch``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.bundles import LoadedBundle, load_bundle
from core.home import ArtifactHome
from service.collection import LiveCollection, View
from service.frozen import for_serving

if TYPE_CHECKING:  # the optional Qdrant backend (SIMCLR_INDEX_BACKEND=qdrant)
    from service.qdrant_collection import QdrantCollection, QdrantView

log = logging.getLogger("service")

NO_MODEL = "no model published yet; run `simclr refresh --data SRC --home DIR` to publish one"


class ModelStore:
    """Holds the current :class:`LoadedBundle` (or None) for one artifact home."""

    def __init__(self, home: ArtifactHome, neighbor_table_max_items: int = 20_000) -> None:
        self.home = home
        self.neighbor_table_max_items = neighbor_table_max_items  # see service.frozen.for_serving
        self.view: View | QdrantView | None = None  # the bundle with the collection, swapped whole (``_install``)
        # The collection in this process (FAISS, service.collection) unless use_collection() gives another (Qdrant).
        self.collection: LiveCollection | QdrantCollection = LiveCollection(home.collection, self._install)
        self.error: str | None = None  # why the version CURRENT names is not the one served
        self.refused_version: str | None = None  # the version ``error`` is about
        self.reloads = 0  # bundles swapped in (the first load included), for /metrics
        self.refusals = 0  # versions refused because they failed to load, for /metrics
        self._tried: str | None = None  # the CURRENT value last loaded or attempted
        self._lock = threading.Lock()  # two concurrent reloads would load the same bundle twice

    def reload_if_changed(self, retry_failed: bool = False) -> bool:
        """Load and swap in the version CURRENT names, if it changed since the last try.

        Blocking (reads weights and the index): call it off the event loop. A
        version that fails to load is logged, kept in ``error`` and not retried
        until CURRENT moves again (or ``retry_failed``, which /admin/reload
        passes); the previous bundle keeps serving. Returns True when a new
        bundle was swapped in. Safe to call from a poller.
        """
        with self._lock:
            version = self.home.current_version()
            if version is None:
                return False
            if version == self._tried and not (retry_failed and self.error is not None):
                return False
            self._tried = version
            try:
                bundle = for_serving(load_bundle(self.home.bundle_dir(version)), self.neighbor_table_max_items)
                # The collection's items embedded with the new encoder, then its view and the bundle installed.
                self.collection.switch(bundle)
            except Exception as e:  # noqa: BLE001 - BundleError mostly; a reload must never kill the service
                self.error, self.refused_version = f"model {version} could not be loaded: {e}", version
                self.refusals += 1
                log.error("%s; still serving %s", self.error, self.bundle.version if self.bundle else "nothing")
                return False
            self.error, self.refused_version = None, None
            self.reloads += 1
            log.info("serving model %s (%d indexed images)", version, bundle.index.ntotal)
            return True

    def use_collection(self, make: Callable[[Callable[[Any], None]], QdrantCollection]) -> None:
        """Serve the collection ``make(publish)`` returns instead of this process's (before the first load)."""
        self.collection = make(self._install)

    def _install(self, view: View | QdrantView) -> None:
        """Make ``view`` (and its bundle) the one requests take. Called by the collection, under its lock,
        so views are installed in the order they were made; one assignment swaps both."""
        self.view = view

    @property
    def bundle(self) -> LoadedBundle | None:
        """The served bundle: the current view's (read once per request, as the view is)."""
        view = self.view
        return None if view is None else view.bundle

    def unavailable_detail(self) -> str:
        """What a 503 says when there is no bundle: the load error if there was one."""
        return self.error or NO_MODEL
