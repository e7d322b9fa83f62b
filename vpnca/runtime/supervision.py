"""Worker supervision for `vpnca serve --workers N` and `vpnca ocsp serve --workers N`.

The parent spawns the workers (spawned, not forked: each starts PKCS#11 afresh) and watches them. A
worker that exits while the service is not stopping, however it exits, is replaced by a new process
with the same index, so the replacement of the first worker runs the scheduler again; while a worker
keeps failing its restarts back off (0.5 s doubling to 30 s), and the backoff is forgotten once a
worker has run for a minute. Every exit and restart is an event (`worker.exited`, `worker.restarted`)
and restarts are counted in /metrics (vpnca_worker_restarts_total{server}); the events name the worker
by `index` and `worker_pid` (`pid` is the process that logged the event, here the parent).

SIGTERM or SIGINT to the parent stops the service: it passes SIGTERM on to the workers, which stop
accepting and finish the requests in flight, waits for them up to a grace period and kills what is
left (a second signal kills at once). Each worker also asks the kernel for SIGTERM when the parent
dies, however it dies, so no worker is left serving on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from vpnca import metrics
from vpnca.events import emit

log = logging.getLogger("vpnca.supervision")

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
BACKOFF_RESET_AFTER = 60.0  # a worker that ran this long before it died is restarted after INITIAL_BACKOFF
SHUTDOWN_GRACE = 30  # after SIGTERM, how long the workers have to finish what they are doing
DRAIN_SECONDS = SHUTDOWN_GRACE - 5  # each worker's own limit for requests in flight: it exits before the kill


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = INITIAL_BACKOFF
    restart_at: float | None = None  # the worker is down, to be started again then
    previous_pid: int | None = None
    exit_code: int | None = None


def exit_fields(exitcode: int | None) -> dict[str, Any]:
    """How a process ended, for an event: its exit code, or the signal that killed it."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return {"exit_code": None, "signal": name}
    return {"exit_code": exitcode, "signal": None}


class Supervisor:
    """Runs `target(*args_for(i))` in worker processes i = 0..workers-1 and keeps them running."""

    def __init__(self, target: Callable[..., Any], args_for: Callable[[int], tuple[Any, ...]],
                 workers: int, *, server: str, on_exit: Callable[[int], None] | None = None,
                 grace: float = SHUTDOWN_GRACE) -> None:
        self.target = target
        self.args_for = args_for
        self.server = server
        self.on_exit = on_exit
        self.grace = grace
        self.slots = [_Slot(i) for i in range(workers)]
        self.context = multiprocessing.get_context("spawn")
        self.signals: list[int] = []
        self._wake_r, self._wake_w = -1, -1

    def run(self) -> None:
        """Until SIGTERM or SIGINT: start the workers, replace those that exit; then stop them all."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = self._catch_signals()
        try:
            metrics.worker_restarts_declared(self.server)
            for slot in self.slots:
                self._start(slot)
            while not self.signals:
                self._wait([slot.process for slot in self.slots if slot.process is not None],
                           self._next_restart())
                self._reap()
                self._restart_due()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
            os.close(wake_r)
            os.close(wake_w)

    # -- the loop ----------------------------------------------------------------------------------

    def _catch_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the workers as SIGTERM would (from another thread, or a signal handler)."""
        self._on_signal(signum, None)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # the pipe is full: the loop is awake anyway
                os.write(self._wake_w, b"\0")

    def _wait(self, processes: list[BaseProcess], timeout: float | None) -> None:
        """Until a process exits, a signal arrives or `timeout` passes (a signal that came before is
        still in the pipe: no wake-up is lost)."""
        wait([p.sentinel for p in processes] + [self._wake_r], timeout)
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _next_restart(self) -> float | None:
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is None or process.is_alive() or self.signals:
                continue
            ran = now - slot.started
            if ran >= BACKOFF_RESET_AFTER:
                slot.backoff = INITIAL_BACKOFF
            delay = slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)
            slot.process, slot.restart_at = None, now + delay
            slot.previous_pid, slot.exit_code = process.pid, process.exitcode
            process.close()  # its sentinel pipe: a crash-looping worker must not leak descriptors
            self._gone(slot.index, slot.previous_pid)
            emit("worker.exited", logging.WARNING, server=self.server, index=slot.index,
                 worker_pid=slot.previous_pid, **exit_fields(slot.exit_code), ran_seconds=round(ran, 3),
                 restart_in_seconds=delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.signals:
                try:
                    self._start(slot)
                except OSError as exc:  # no process could be made (EAGAIN, ENOMEM): try again later
                    delay, slot.backoff = slot.backoff, min(slot.backoff * 2, MAX_BACKOFF)
                    slot.restart_at = now + delay
                    emit("worker.restart_failed", logging.ERROR, server=self.server, index=slot.index,
                         error=str(exc), restart_in_seconds=delay)

    def _start(self, slot: _Slot) -> None:
        process = self.context.Process(target=_worker,
                                       args=(self.target, self.args_for(slot.index), os.getpid()),
                                       name=f"vpnca-{self.server}-{slot.index}", daemon=True)
        process.start()
        slot.process, slot.started = process, time.monotonic()
        if slot.restart_at is None:
            emit("worker.started", server=self.server, index=slot.index, worker_pid=process.pid)
            return
        slot.restart_at = None
        metrics.worker_restarted(self.server)
        emit("worker.restarted", logging.WARNING, server=self.server, index=slot.index,
             worker_pid=process.pid, previous_worker_pid=slot.previous_pid, **exit_fields(slot.exit_code))

    def _gone(self, index: int, pid: int | None) -> None:
        if pid is not None:
            metrics.worker_gone(pid)
        if self.on_exit is not None:
            self.on_exit(index)

    # -- stopping ----------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        """SIGTERM to every worker; wait up to the grace period (a second signal: not at all); kill the
        rest."""
        running = [slot.process for slot in self.slots if slot.process is not None]
        emit("workers.stopping", server=self.server, workers=len(running), grace_seconds=self.grace,
             signal=signal.Signals(self.signals[0]).name if self.signals else None)
        for process in running:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.grace
        while len(self.signals) < 2 and (alive := [p for p in running if p.is_alive()]):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wait(alive, left)
        for process in running:
            if process.is_alive():
                emit("worker.killed", logging.WARNING, server=self.server, worker_pid=process.pid,
                     reason=("second signal" if len(self.signals) >= 2
                             else f"still running after {self.grace:g} s"))
                process.kill()
            process.join(5)
            if process.pid is not None:
                metrics.worker_gone(process.pid)
        emit("workers.stopped", server=self.server,
             exits={str(p.pid): exit_fields(p.exitcode) for p in running})


def _worker(target: Callable[..., Any], args: tuple[Any, ...], parent: int) -> None:
    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    # not Linux: the parent's SIGTERM handler still stops us
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent went before the request took effect
        return
    target(*args)


def run_workers(target: Callable[..., Any], args_for: Callable[[int], tuple[Any, ...]], workers: int, *,
                server: str, on_exit: Callable[[int], None] | None = None,
                grace: float = SHUTDOWN_GRACE) -> None:
    """Run `target(*args_for(0))` here, or `workers` supervised worker processes (see the module)."""
    if workers <= 1:
        target(*args_for(0))
        return
    Supervisor(target, args_for, workers, server=server, on_exit=on_exit, grace=grace).run()
