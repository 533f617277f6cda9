"""Preemption: SIGTERM and SIGINT end a run at a step boundary, with a final checkpoint.

Clusters and spot machines preempt a job with SIGTERM (then SIGKILL after a grace period);
a user stops one with Ctrl-C (SIGINT). Both are handled alike:

* outside the step loop (start-up, data loading, the final evaluation) the signal raises
  ``Interrupted`` at once: there is nothing new to save;
* inside the step loop (``run_loop.RunLoop.run`` enters ``deferred()``) the signal is only
  recorded; the loop finishes the step it is in, saves a checkpoint and raises
  ``Interrupted`` naming the step. A second signal while the first is pending raises at once.

The commands (``cli.run``) print ``Interrupted``'s message as one line and exit with
``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), the shells' convention.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A run stopped on SIGTERM / SIGINT; ``signum`` is the signal, the message says more."""

    def __init__(self, message, signum=signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self):
        return 128 + self.signum


def signal_name(signum):
    return signal.Signals(signum).name


def _raise_now(signum, frame):
    del frame
    raise Interrupted(
        f"interrupted ({signal_name(signum)}) before the first step; rerun the same command "
        "to start again",
        signum,
    )


def install():
    """Makes SIGTERM and SIGINT raise ``Interrupted`` (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _raise_now)


class Pending:
    """The signal received while deferred (``signum``; None: none yet)."""

    def __init__(self):
        self.signum = None

    def __bool__(self):
        return self.signum is not None


@contextlib.contextmanager
def deferred(on_second=None):
    """Records SIGTERM / SIGINT instead of raising, inside the ``with`` block.

    Args:
      on_second: ``on_second(signum) -> message``: the message of the ``Interrupted`` raised
        by a second signal while one is pending (default: a generic one).

    Yields:
      A ``Pending`` that is true once a signal arrived. Outside the main thread signals are
      left alone and the ``Pending`` stays false.
    """
    pending = Pending()
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def record(signum, frame):
        del frame
        if pending:
            message = on_second(signum) if on_second else "interrupted twice; stopping now"
            raise Interrupted(message, signum)
        pending.signum = signum

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, record)
    try:
        yield pending
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
