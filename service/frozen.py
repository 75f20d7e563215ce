"""A loaded bundle as the service runs it: models traced and frozen, neighbours precomputed.

:func:`for_serving` is applied once per bundle, when the store loads it
(``service.state``); the model thread (``service.model_thread``) then runs the
frozen models, and GET /neighbors?id= reads the precomputed table.

Why not the eager modules: the forward pass runs in the model thread while the
event loop runs Python in the main thread, and an eager ResNet gives the GIL
back and takes it again around each of its ~60 ops. Each retake can wait for
the event loop's switch interval (5 ms), so a batch that takes 25 ms alone
took 207 ms next to a busy Python thread (measured, width-16 ResNet-18, batch
16). A frozen TorchScript graph runs in C++ with the GIL released for the whole
pass (57 ms in the same test) and, with batch norm folded into the convolutions,
is ~1.6x faster alone too.

``torch.jit`` is deprecated in favour of ``torch.compile``/``torch.export``, but
those compile for minutes on a small CPU, on every reload. Tracing takes a second,
and it is checked: a traced model that does not reproduce the eager outputs, or
fails to trace, is not used; the eager one serves instead (logged).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import torch
from torch import nn

from core.bundles import LoadedBundle
from index.faiss_index import neighbor_table

log = logging.getLogger("service")

MAX_K = 100  # GET /neighbors' largest k
TOLERANCE = 1e-3  # max abs difference to the eager outputs (float32 reorderings give ~1e-6)


def freeze(model: nn.Module, image_size: int, batch: int = 4) -> nn.Module:
    """``model`` (eval mode, CPU) as a frozen TorchScript graph for any batch size, or ``model`` if that fails."""
    example = torch.randn(batch, 3, image_size, image_size)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice, see the module docstring
            # check_trace=False: the check below compares with our tolerance, on two batch sizes
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False)))
            for x in (example, example[:1]):  # another batch size than the traced one
                diff = (traced(x) - model(x)).abs().max().item()
                if not diff <= TOLERANCE:
                    raise ValueError(f"traced outputs differ from eager ones by {diff:.2g}")
    except Exception as e:  # noqa: BLE001 - any failure means: serve the eager module
        log.warning("serving the eager %s: tracing failed: %s", type(model).__name__, e)
        return model
    return traced


def for_serving(bundle: LoadedBundle, neighbor_table_max_items: int = 20_000) -> LoadedBundle:
    """``bundle`` with its models frozen for inference and, when its index holds at most
    ``neighbor_table_max_items`` items, every item's neighbours precomputed (blocking, a second
    or two for 10k items: run it off the event loop).

    The table turns GET /neighbors?id= into a lookup: that route runs on the event loop, and
    at 10k items the exact search was a fifth of its cost. It holds ``MAX_K + 1`` hits per item
    (12 bytes each: 12 MB for 10k items) and takes ``N**2 * D`` multiply-adds to build, hence the cap.
    """
    size = bundle.manifest.image_size
    table = None
    if 0 < bundle.index.ntotal <= neighbor_table_max_items:
        table = neighbor_table(bundle.index, MAX_K + 1)  # + 1: the item itself, dropped from answers
    classifier = freeze(bundle.classifier, size) if bundle.classifier is not None else None  # None: trained without labels
    return replace(bundle, encoder=freeze(bundle.encoder, size), classifier=classifier, id_neighbors=table)
