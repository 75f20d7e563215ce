"""Routes that skip FastAPI's per-request machinery, for the throughput path.

A :class:`DirectRoute` is documented and routed like any FastAPI route (its
``response_model``, ``responses`` and ``openapi_extra`` make the /docs entry,
and ``HTTPException`` still becomes the error JSON), but its endpoint is called
as a Starlette endpoint: it takes the :class:`Request`, reads what it needs and
returns the :class:`Response`. FastAPI would otherwise solve the declared
signature per request (dependencies, a sub-response object, parameter
validation) and validate the returned model. On /classify that was 0.12 of
0.46 core-ms of event-loop time per request: one process on one core went from
808 to 904 requests/s at 32 connections (measured; see the README's service
benchmark).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

_INT = re.compile(r"[+-]?\d{1,18}")


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is ``async (Request) -> Response`` and is called as it is."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint


def int_query(request: Request, name: str, default: int, lo: int, hi: int, hint: str = "") -> int:
    """Query parameter ``name`` as an int in ``[lo, hi]`` (``default`` when absent); 422 otherwise,
    worded like the app's validation errors."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise HTTPException(422, f"invalid request: query parameter `{name}`: expected an integer, got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise HTTPException(422, f"invalid request: query parameter `{name}`: must be between {lo} and {hi}{hint}, got {value}")
    return value


def int_parameter(name: str, default: int, minimum: int, description: str) -> dict[str, Any]:
    """The OpenAPI entry of an optional integer query parameter, for ``openapi_extra``."""
    schema = {"type": "integer", "minimum": minimum, "default": default}
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def json_response(model: BaseModel) -> Response:
    """``model`` serialised by pydantic's own encoder, as FastAPI would, without re-validating it."""
    return Response(model.model_dump_json(), media_type="application/json")
