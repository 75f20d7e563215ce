"""The HTTP service over the published model bundle (DESIGN.md, Contracts: HTTP).

`create_app` builds the FastAPI app; `run` serves it with uvicorn. Nothing here
loads a model at import time: the app's lifespan does, so importing is cheap
and tests or tools can build an app over any ``--home``.
"""
