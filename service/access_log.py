"""The access-log line written for every request, formatted for a fraction of uvicorn's cost.

uvicorn's ``AccessFormatter`` copies each record twice (``copy.copy`` in both of its
``formatMessage`` layers) and builds an ``http.HTTPStatus`` per line to find the
status phrase. With the default logging that is the one piece of per-request work
the access log adds to the event loop. :class:`AccessFormatter` writes the same line
(a test compares them) without the copies and with the phrases looked up once.
Coloured output (a terminal) and a format other than uvicorn's default are left to
uvicorn's own code: they are for people watching a console, not for throughput.
"""

from __future__ import annotations

import copy
import http
import logging

import uvicorn.config
import uvicorn.logging

DEFAULT_FORMAT: str = uvicorn.config.LOGGING_CONFIG["formatters"]["access"]["fmt"]
_PHRASES = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}


class AccessFormatter(uvicorn.logging.AccessFormatter):
    """uvicorn's access-log formatter, with its default uncoloured line written directly."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%", use_colors: bool | None = None) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt, style=style, use_colors=use_colors)  # type: ignore[arg-type]
        self._direct = not self.use_colors and fmt == DEFAULT_FORMAT and style == "%"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if not self._direct or not isinstance(record.args, tuple) or len(record.args) != 5:
            return super().formatMessage(record)
        client_addr, method, full_path, http_version, status_code = record.args
        code = int(status_code)  # type: ignore[call-overload]
        status = _PHRASES.get(code) or f"{code} "
        prefix = record.levelname + ":" + " " * (8 - len(record.levelname))
        return f'{prefix} {client_addr} - "{method} {full_path} HTTP/{http_version}" {status}'


def log_config(level: str) -> dict[str, object]:
    """uvicorn's logging configuration with this access formatter, and the ``service`` logger
    at ``level`` through uvicorn's handler, so model loads and errors show like its own lines."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["access"]["()"] = f"{__name__}.AccessFormatter"
    config["loggers"]["service"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
