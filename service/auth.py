"""Bearer tokens: item writes (``SIMCLR_WRITE_TOKEN``) and ``/admin/*`` (``SIMCLR_ADMIN_TOKEN``).

A missing ``Authorization`` header is 401 with ``WWW-Authenticate: Bearer`` (as the OpenAPI
security scheme declares), saying also how to enable what it guards when its token is not set;
credentials sent while the token is not set are 403 (disabled, and how to enable it); a wrong
token is 401. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr


def check_bearer(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None, *, disabled: str, unauthorized: str) -> None:
    """Raise 401 (``unauthorized``) without ``credentials`` or when they do not carry ``token``, 403
    (``disabled``) for credentials while ``token`` is unset."""
    if credentials is None:
        detail = unauthorized if token is not None else f"{unauthorized}; {disabled}"
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
    if token is None:
        raise HTTPException(403, disabled)
    given = credentials.credentials.encode()
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(401, unauthorized, headers={"WWW-Authenticate": "Bearer"})
