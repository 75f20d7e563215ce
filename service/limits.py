"""Refusing oversized request bodies before they are read.

Every POST route is covered, whatever it does with its body: this middleware
answers 413 from the Content-Length header, or as soon as the bytes received
pass the limit when the body is chunked. The upload routes then check the file
part itself exactly as it streams (``fastpath.receive_upload``); ``slack`` here
covers the multipart framing around it.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_SLACK = 64 * 1024


class BodyLimitMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): it must see the body stream, and costs nothing on GETs."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, slack: int = MULTIPART_SLACK) -> None:
        self.app = app
        self.upload_limit = max_upload_bytes
        self.limit = max_upload_bytes + slack

    def _detail(self) -> str:
        return f"upload too large: over the limit of {self.upload_limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": self._detail()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside FastAPI's body parsing, which re-raises HTTPExceptions as they are.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)
