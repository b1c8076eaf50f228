"""Lines that keep a long run from going silent: `say` and `Heartbeat`.

A tqdm bar shows only on a terminal; in a log file, a pipe or CI a step of a minute printed nothing.
`Heartbeat("unsplit reference")` prints a line when the step starts, one every `HEARTBEAT_S` seconds while
it runs (from a thread: torch releases the GIL in its kernels, so the line comes on time), and one with its
time when it ends, so no stretch longer than a few seconds is silent. `say` is the line itself: an INFO
log record when logging is set up (Hydra's job log, pytest), otherwise a plain line on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

HEARTBEAT_S = 5.0


def say(log: logging.Logger, msg: str, *args) -> None:
    """Log `msg` at INFO; print it to stderr when nothing would show an INFO record."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(msg, *args)
    else:
        from tqdm.auto import tqdm

        tqdm.write(msg % args if args else msg, file=sys.stderr)


class Heartbeat:
    """`with Heartbeat("what", log):` a line at the start, one every `every` s while the block runs (with
    `status()` when given, e.g. "12 of 48 jobs done"), and one with the elapsed time at the end."""

    def __init__(self, what: str, log: logging.Logger | None = None, *, every: float = HEARTBEAT_S,
                 status: Callable[[], str] | None = None, start_line: bool = True) -> None:
        self.what = what
        self.log = log or logging.getLogger("splitinfer")
        self.every = every
        self.status = status
        self.start_line = start_line
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def _status(self) -> str:
        if self.status is None:
            return ""
        try:
            return f", {self.status()}"
        except Exception:  # noqa: BLE001 - a progress line must never stop the work
            return ""

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            say(self.log, "  ... %s: %.0f s%s", self.what, time.perf_counter() - self.t0, self._status())

    def start(self) -> Heartbeat:
        self.t0 = time.perf_counter()
        if self.start_line:
            say(self.log, "%s ...", self.what)
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat: {self.what}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, done_line: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if done_line:
            say(self.log, "%s: done in %.1f s%s", self.what, time.perf_counter() - self.t0, self._status())

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(done_line=exc_type is None)
