"""The project's access-log formatter writes exactly uvicorn's line, for every status and for odd arguments."""

from __future__ import annotations

import logging
import logging.config

import pytest
import uvicorn.logging

from service.access_log import DEFAULT_FORMAT, AccessFormatter, log_config


def _record(args: tuple[object, ...], level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize("status", [200, 201, 204, 304, 400, 404, 409, 413, 415, 422, 500, 503, 599])
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_same_line_as_uvicorn(status: int, level: int) -> None:
    record = _record(("127.0.0.1:50312", "POST", "/classify?top_k=3", "1.1", status), level)
    theirs = uvicorn.logging.AccessFormatter(DEFAULT_FORMAT, use_colors=False)
    ours = AccessFormatter(DEFAULT_FORMAT, use_colors=False)
    assert ours._direct
    assert ours.format(record) == theirs.format(record)


@pytest.mark.parametrize("use_colors, fmt", [(True, DEFAULT_FORMAT), (False, "%(client_addr)s %(status_code)s %(asctime)s")])
def test_other_formats_are_uvicorns(use_colors: bool, fmt: str) -> None:
    record = _record(("10.0.0.2:1", "GET", "/neighbors?id=3", "1.1", 200))
    ours, theirs = AccessFormatter(fmt, use_colors=use_colors), uvicorn.logging.AccessFormatter(fmt, use_colors=use_colors)
    assert not ours._direct
    theirs.converter = ours.converter
    assert ours.format(record) == theirs.format(record)


def test_config_uses_it() -> None:
    config = log_config("warning")
    assert config["formatters"]["access"]["()"] == "service.access_log.AccessFormatter"  # type: ignore[index]
    assert config["loggers"]["service"]["level"] == "WARNING"  # type: ignore[index]
    formatter = logging.config.DictConfigurator(config).configure_formatter(dict(config["formatters"]["access"]))  # type: ignore[index]
    assert isinstance(formatter, AccessFormatter) and formatter._direct
