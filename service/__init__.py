"""The HTTP service over the published model bundle.

``service.serve`` starts it (``simclr serve``, ``python -m service``);
``service.app.create_app`` builds the FastAPI app, ``service.app.run`` serves it
with uvicorn. Nothing here loads a model at import time: the app's lifespan does,
so importing is cheap and tests or tools can build an app over any ``--home``.

The contract with clients:

- ``POST /classify`` (multipart field ``file``, ``?top_k=``): the most probable
  classes; ``GET /neighbors?id=&k=`` and ``POST /neighbors`` (``file``, ``?k=``):
  the most similar indexed images; ``GET /images/{id}``: an indexed image as PNG;
  ``/healthz``, ``/readyz``, ``/model``, ``/metrics``, ``POST /admin/reload``.
- Every JSON answer about the model carries ``model_version``, the bundle that
  computed it; a request is answered by one bundle from start to end, even while
  a newly published one is swapped in.
- Errors are JSON ``{"detail": "<what was wrong>"}``, never a bare 500 for bad
  input: 400 empty upload or an image that does not decode, 413 an upload over
  ``SIMCLR_MAX_UPLOAD_BYTES`` or an image over ``SIMCLR_MAX_IMAGE_PIXELS``, 415
  bytes that are not an image, 422 a missing ``file`` field or a parameter out
  of range (``k``, ``top_k``, ``id``), 404 an unknown image id, 401 ``/admin/*``
  without the right bearer token, 403 ``/admin/*`` while no ``SIMCLR_ADMIN_TOKEN``
  is set, 503 while no model is loaded (the reason in ``detail``).

A request's path through the package: a route (``routes/``) reads the request
(``fastpath``), makes its upload ready (``decoding``) and submits it to a batcher
(``batching``); the batcher runs ``model_thread``'s function on the batch in the
model thread, which decodes the batch's thumbnails (``decoding``) and runs the
frozen models (``frozen``) of the bundle the request took from ``state``.
"""
