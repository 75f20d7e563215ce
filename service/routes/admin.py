"""Admin endpoints, behind a bearer token (setting ``admin_token``, env ``SIMCLR_ADMIN_TOKEN``).

No token configured: admin is disabled (403). Missing or wrong token: 401 with
``WWW-Authenticate: Bearer``. The token is compared in constant time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth import check_bearer
from service.deps import SettingsDep, StoreDep
from service.schemas import ReloadResult, errors

DISABLED = "admin endpoints are disabled: set SIMCLR_ADMIN_TOKEN (the `admin_token` setting) to enable them"
UNAUTHORIZED = "a valid admin token is required: send `Authorization: Bearer <SIMCLR_ADMIN_TOKEN>`"

bearer = HTTPBearer(auto_error=False, description="the SIMCLR_ADMIN_TOKEN of the service")


async def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    check_bearer(settings.admin_token, credentials, disabled=DISABLED, unauthorized=UNAUTHORIZED)


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reload", response_model=ReloadResult, responses=errors(401, 403))
async def reload(store: StoreDep) -> ReloadResult:
    """Check CURRENT now instead of at the next poll, and load the version it names if it is not served
    (a version that failed before is tried again). Answers the served version and any load error."""
    reloaded = await run_in_threadpool(store.reload_if_changed, True)
    bundle = store.bundle
    return ReloadResult(model_version=bundle.version if bundle else None, reloaded=reloaded, last_error=store.error)
