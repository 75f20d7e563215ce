"""The one way to start the service: ``simclr serve`` and ``python -m service`` both use it.

:func:`add_arguments` adds the flags to a parser, :func:`main` serves with them.
Flags given on the command line override the ``SIMCLR_*`` environment; the rest
comes from it (``service.settings``). Nothing heavy is imported here (no torch,
FAISS or FastAPI): the ``simclr`` command imports this module to build its parser,
and ``simclr --help`` must stay instant.
"""

from __future__ import annotations

import argparse

FLAGS = ("home", "host", "port", "workers")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0..65535, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's flags: --home, --host, --port, --workers (each defaults to its ``SIMCLR_*`` variable)."""
    parser.add_argument("--home", help="artifact home holding models/ and CURRENT (default: $SIMCLR_HOME or ./artifacts)")
    parser.add_argument("--host", help="interface to bind (default: $SIMCLR_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="TCP port (default: $SIMCLR_PORT or 8000)")
    parser.add_argument(
        "--workers", type=_positive_int,
        help="server processes sharing the port, one per core for the most /classify throughput (default: $SIMCLR_WORKERS or 1)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> None:
    """Serve until interrupted, with the flags in ``args`` (other attributes of it are ignored)."""
    from service.threads import process_defaults

    process_defaults()  # before anything below loads torch and FAISS (and their OpenMP) or starts a thread

    from service.app import run
    from service.settings import Settings
    from service.workers import WorkerStartupError

    given = {name: getattr(args, name, None) for name in FLAGS}
    try:
        run(Settings(**{name: value for name, value in given.items() if value is not None}))
    except WorkerStartupError as e:  # said in one line, after the workers' own tracebacks
        raise SystemExit(f"error: {e}") from None
