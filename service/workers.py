"""Several server processes on one port, with the kernel spreading connections over them.

Why not ``uvicorn --workers``: there the processes share one listening socket,
and the first to wake accepts every pending connection (asyncio accepts up to
the backlog per wake-up). Clients that open their connections together -- a
load balancer's pool, a benchmark, a batch job -- then all land on one process
while the others idle: /classify at 32 connections measured 790 requests/s in
one run and 1410 in the next on the 2-core build machine. Here each process
binds its own socket with ``SO_REUSEPORT``, and the kernel hashes every new
connection to one of them.

The parent only supervises: it starts the workers, restarts one that dies, and
on SIGTERM/SIGINT stops them all (each finishes its in-flight requests). If the
parent itself is killed (SIGKILL, OOM killer), the kernel sends each worker
SIGTERM (``PR_SET_PDEATHSIG``), so no orphan keeps serving an old port.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("service")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other processes may bind too (``SO_REUSEPORT``)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def refuse_taken_port(host: str, port: int) -> None:
    """Raise if something already accepts connections on ``host:port``.

    Binding with ``SO_REUSEPORT`` succeeds beside another server of the same user
    that did the same (a second ``simclr serve --workers`` on the port), and the
    kernel would then split clients between the two; a connection attempt tells.
    """
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=0.5):
            pass
    except OSError:
        return  # nothing answers: free, or only bound without listening
    raise OSError(errno.EADDRINUSE, f"something already listens on {host}:{port}")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies (Linux; elsewhere nothing).

    Without it, workers outlive a supervisor killed with SIGKILL and keep the port.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (AttributeError, OSError) as e:  # not Linux: no prctl
        log.debug("workers will not follow their parent's death: %s", e)
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(factory: str, host: str, port: int, uvicorn_options: dict[str, Any], parent: int) -> None:
    """One worker process: its own socket on the shared port, and uvicorn on it."""
    import uvicorn

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into one SIGTERM per worker
    exit_with_parent(parent)
    config = uvicorn.Config(factory, factory=True, **uvicorn_options)
    uvicorn.Server(config).run(sockets=[reuse_port_socket(host, port)])


def supervise(factory: str, workers: int, host: str, port: int, uvicorn_options: dict[str, Any],
              on_exit: Callable[[int], None] | None = None) -> None:
    """Run ``workers`` processes serving the app ``factory`` makes, until SIGTERM or SIGINT.

    ``factory`` is an import string (``module:function``): workers are spawned, not
    forked, so nothing of this process (threads, OpenMP pools) leaks into them.
    ``on_exit(pid)`` is called for every worker that exits.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("several workers need SO_REUSEPORT (Linux, BSD, macOS); run one worker here")
    if port == 0:
        raise ValueError("several workers need a fixed port: with port 0 each would get its own")
    refuse_taken_port(host, port)
    reuse_port_socket(host, port).close()  # fail here, with a clear error, if the address cannot be bound
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = ctx.Process(target=_serve, args=(factory, host, port, uvicorn_options, os.getpid()), name="simclr-worker")
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [start() for _ in range(workers)]
    log.info("%d worker processes on %s:%d (parent %d)", workers, host, port, os.getpid())
    try:
        while not stopping:
            time.sleep(0.5)
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker %d exited with %s; starting another", process.pid, process.exitcode)
                    if on_exit:
                        on_exit(process.pid or 0)
                    processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes in-flight requests, then exits
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
            if on_exit:
                on_exit(process.pid or 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
