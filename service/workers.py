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

A worker that dies soon after it starts (an import error, a port it cannot bind,
a crash while loading) would die again at once: it is restarted after a delay
that doubles each time, and after a few such failures in a row the supervisor
stops everything and raises :class:`WorkerStartupError`, which names the exit
code; the worker's own log lines (on the supervisor's stderr) say why.
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
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("service")

MIN_UPTIME = 30.0  # seconds: a worker that dies sooner failed while starting, not while serving
RESTART_DELAY = 0.5  # seconds before restarting a worker that failed while starting; doubles each time
MAX_QUICK_FAILURES = 5  # failures while starting, in a row, before the supervisor gives up
POLL = 0.5  # seconds: the longest the supervisor waits before noticing a stop signal


class WorkerStartupError(RuntimeError):
    """A worker process keeps dying while it starts: restarting it again would only loop."""


def describe_exit(code: int | None) -> str:
    """A worker's exit code in words: ``exit code 1``, ``signal SIGKILL (exit code -9)``."""
    if code is None:
        return "an unknown exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"signal {-code} (exit code {code})"
    return f"exit code {code}"


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


@dataclass
class _Slot:
    """One of the workers: its process (None while waiting to be restarted) and its recent failures."""

    process: BaseProcess | None
    started: float
    quick_failures: int = 0  # in a row, each within MIN_UPTIME of starting
    restart_at: float = 0.0  # when process is None: when to start the next one


def supervise(factory: str, workers: int, host: str, port: int, uvicorn_options: dict[str, Any],
              on_exit: Callable[[int], None] | None = None, *, min_uptime: float = MIN_UPTIME,
              restart_delay: float = RESTART_DELAY, max_quick_failures: int = MAX_QUICK_FAILURES) -> None:
    """Run ``workers`` processes serving the app ``factory`` makes, until SIGTERM or SIGINT.

    ``factory`` is an import string (``module:function``): workers are spawned, not
    forked, so nothing of this process (threads, OpenMP pools) leaks into them.
    ``on_exit(pid)`` is called for every worker that exits.

    A worker that dies after serving for ``min_uptime`` seconds is replaced at once.
    One that dies sooner is replaced after ``restart_delay`` seconds, doubled for
    each such failure in a row; the ``max_quick_failures``-th stops every worker and
    raises :class:`WorkerStartupError`.
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

    def exited(slot: _Slot, process: BaseProcess, now: float) -> None:
        """Schedule the restart of ``slot``'s worker, which has exited; raise if it keeps failing to start."""
        uptime, how = now - slot.started, describe_exit(process.exitcode)
        if uptime >= min_uptime:
            slot.quick_failures, slot.restart_at = 0, now
            log.error("worker %d exited with %s; starting another", process.pid, how)
            return
        slot.quick_failures += 1
        if slot.quick_failures >= max_quick_failures:
            raise WorkerStartupError(
                f"worker {process.pid} exited with {how} {uptime:.1f} s after it started; {slot.quick_failures} workers "
                f"in a row died within {min_uptime:g} s of starting: giving up. The worker's own log lines above "
                "(workers write to this process's stderr) say why it failed."
            )
        delay = restart_delay * 2 ** (slot.quick_failures - 1)
        slot.restart_at = now + delay
        log.error("worker %d exited with %s %.1f s after it started; starting another in %.1f s",
                  process.pid, how, uptime, delay)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    slots = [_Slot(start(), time.monotonic()) for _ in range(workers)]
    log.info("%d worker processes on %s:%d (parent %d)", workers, host, port, os.getpid())
    try:
        while not stopping:
            # Until a worker exits, a restart is due, or POLL passes (a stop signal does not end the wait).
            now = time.monotonic()
            due = [slot.restart_at - now for slot in slots if slot.process is None]
            wait([slot.process.sentinel for slot in slots if slot.process is not None], max(0.0, min([POLL, *due])))
            now = time.monotonic()
            for slot in slots:
                if stopping:
                    break
                process = slot.process
                if process is not None and not process.is_alive():
                    slot.process = None
                    if on_exit:
                        on_exit(process.pid or 0)
                    exited(slot, process, now)
                if slot.process is None and slot.restart_at <= now:
                    slot.process, slot.started = start(), now
    finally:
        processes = [slot.process for slot in slots if slot.process is not None]
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
