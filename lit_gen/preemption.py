"""Stopping on SIGINT / SIGTERM within seconds, without losing a completed step (no Lightning imports here).

A preempted job (SLURM, Kubernetes) gets a grace period of about 30 s between SIGTERM and SIGKILL. A training
step is short and is always finished (its weights are then consistent), but a sample grid, an FID pass or a
validation pass can take minutes: those run *interruptible*, and a signal received inside one raises
:class:`Preempted` at once. A signal received during a step is acted on at the end of that step (the
checkpoint callback raises :class:`Preempted` there). On its way out, the checkpoint callback saves the last
completed step.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; SLURM / Kubernetes before preemption


class Preempted(Exception):  # noqa: N818 - not an error: the job was asked to stop
    """Training stopped by a signal; ``signum`` is the signal, ``step`` the last completed step (set when
    saved)."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"stopped by {signum.name}")
        self.signum = signum
        self.step: int | None = None
        self.saved_to: str | None = None


class StopSignals:
    """The process's SIGINT / SIGTERM handlers while fitting. The first signal asks to stop; inside
    :meth:`interruptible` it raises :class:`Preempted` at once; elsewhere the checkpoint callback stops at the
    end of the step. A second signal raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict = {}
        self._depth = 0  # nesting of interruptible blocks
        self._immediate = True  # whether a signal inside one raises at once

    def install(self) -> None:
        self.received, self._depth = None, 0  # a block an earlier fit left by an exception is over
        try:
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        except ValueError:  # not the main thread: leave the process's handlers alone
            self._previous = {}

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @contextmanager
    def interruptible(self, immediate: bool = True, agree: Callable[[bool], bool] | None = None):
        """A block (sample grid, FID, validation) that a signal stops: raises :class:`Preempted` on entry when
        a signal came before, and, if ``immediate``, from the signal handler while it runs. ``agree(stop)``
        makes the entry decision the same on every process (one collective), so no rank starts a block
        alone."""
        self.enter(immediate, agree)
        try:
            yield
        finally:
            self.leave()

    def enter(self, immediate: bool = True, agree: Callable[[bool], bool] | None = None) -> None:
        """:meth:`interruptible` for a block delimited by two hooks (validation start and end)."""
        stop = self.received is not None
        if (agree(stop) if agree is not None else stop):
            raise Preempted(self.received or signal.SIGTERM)
        self._depth += 1
        self._immediate = immediate

    def leave(self) -> None:
        self._depth = max(0, self._depth - 1)

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is not None:  # the second signal: stop now
            self.restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        now = self._depth and self._immediate
        where = "now" if now else "once this step (or this pass) ends"
        print(f"\nlit-gen: {self.received.name} received: saving last.ckpt {where} "
              f"(send it again to abort at once)",
              file=sys.stderr)
        if now:
            raise Preempted(self.received)


stop_signals = StopSignals()  # one per process, as signal handlers are
