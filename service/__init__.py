"""The HTTP service over the published model bundle.

``service.serve`` starts it (``simclr serve``, ``python -m service``);
``service.app.create_app`` builds the FastAPI app, ``service.app.run`` serves it
with uvicorn. Nothing here loads a model at import time: the app's lifespan does,
so importing is cheap and tests or tools can build an app over any ``--home``.

The contract with clients:

- ``POST /classify`` (multipart field ``file``, ``?top_k=``): the most probable
  classes (409 for a model trained without labels, which has no classifier);
  ``GET /neighbors?id=&k=`` and ``POST /neighbors`` (``file``, ``?k=``): the most
  similar indexed images; ``POST /embed`` (``file``): the image's unit embedding,
  as the index holds it; ``GET /images/{id}``: an indexed image as PNG;
  ``/healthz``, ``/readyz``, ``/model``, ``/metrics``, ``POST /admin/reload``.
- Items (``routes/items``, ``collection``): every indexed image is an item with an
  id and a JSON payload; ``POST /items`` (``file``, optional ``id`` and ``payload``)
  adds or replaces one, ``DELETE /items/{id}`` removes one, ``GET /items/{id}`` and
  ``GET /items?offset=&limit=`` read them. Neighbour answers include added items
  (each neighbour with its ``payload``) and never deleted ones. A write is on disk
  before it is answered; other ``--workers`` processes search it within a second.
- Every JSON answer about the model carries ``model_version``, the bundle that
  computed it; a request is answered by one bundle from start to end, even while
  a newly published one is swapped in.
- Errors are JSON ``{"detail": "<what was wrong>"}``, never a bare 500 for bad
  input: 400 empty upload or an image that does not decode, 413 an upload over
  ``SIMCLR_MAX_UPLOAD_BYTES`` or an image over ``SIMCLR_MAX_IMAGE_PIXELS``, 415
  bytes that are not an image, 422 a missing ``file`` field or a parameter out
  of range (``k``, ``top_k``, ``id``), or a bad item ``id`` or ``payload`` (not a
  JSON object of at most 16 KB), 404 an unknown image or item id, 401 ``/admin/*``
  or an item write without the right bearer token, 403 ``/admin/*`` while no
  ``SIMCLR_ADMIN_TOKEN`` is set and item writes while no ``SIMCLR_WRITE_TOKEN`` is,
  503 while no model is loaded (the reason in ``detail``).

A request's path through the package: a route (``routes/``) reads the request
(``fastpath``), makes its upload ready (``decoding``) and submits it to a batcher
(``batching``); the batcher runs ``model_thread``'s function on the batch in the
model thread, which decodes the batch's thumbnails (``decoding``) and runs the
frozen models (``frozen``) of the bundle the request took from ``state``.
"""
