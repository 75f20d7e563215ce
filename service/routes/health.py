"""Liveness, readiness and what model is being served."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from core.bundles import DERIVED
from service.deps import BundleDep, StoreDep
from service.schemas import Health, ModelInfo, Ready, errors

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up. Says nothing about the model, so an orchestrator never restarts a
    healthy process just because nothing has been published yet."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses=errors(503))
async def readyz(store: StoreDep) -> Ready:
    """Ready to answer model requests: a bundle is loaded. 503 (with the reason) before.

    Still 200 when a newer version was refused: the loaded one keeps serving, and
    ``last_error`` says what is wrong with the new one."""
    bundle = store.bundle
    if bundle is None:
        raise HTTPException(503, store.unavailable_detail())
    return Ready(status="ready", model_version=bundle.version, last_error=store.error)


@router.get("/model", response_model=ModelInfo, responses=errors(503))
async def model(bundle: BundleDep) -> ModelInfo:
    """The served bundle's manifest: backbone, classes, metrics, index, weight fingerprints; ``has_classifier``
    is false for a model trained without labels (no ``class_names``; POST /classify answers 409)."""
    return ModelInfo(**bundle.manifest.model_dump(exclude=DERIVED), model_version=bundle.version)
