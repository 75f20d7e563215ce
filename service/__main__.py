"""``python -m service --home DIR --host H --port P``: the service without the ``simclr`` CLI."""

from __future__ import annotations

import argparse

from service.threads import passive_openmp

passive_openmp()  # before torch and FAISS load OpenMP

from service.app import run  # noqa: E402
from service.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve the published SimCLR model over HTTP.")
    parser.add_argument("--home", help="artifact home (default: $SIMCLR_HOME or ./artifacts)")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--workers", type=int, help="server processes sharing the port (default 1)")
    args = parser.parse_args(argv)
    # Only what was given overrides the SIMCLR_* environment.
    run(Settings(**{k: v for k, v in vars(args).items() if v is not None}))


if __name__ == "__main__":
    main()
