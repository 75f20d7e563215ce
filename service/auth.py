"""Bearer tokens: item writes (``SIMCLR_WRITE_TOKEN``) and ``/admin/*`` (``SIMCLR_ADMIN_TOKEN``).

A token that is not set disables what it guards (403, saying how to enable it); a missing or
wrong token is 401 with ``WWW-Authenticate: Bearer``. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr


def check_bearer(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None, *, disabled: str, unauthorized: str) -> None:
    """Raise 403 (``disabled``) when ``token`` is unset, 401 (``unauthorized``) when ``credentials`` do not carry it."""
    if token is None:
        raise HTTPException(403, disabled)
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(401, unauthorized, headers={"WWW-Authenticate": "Bearer"})
