"""Console progress of a run: compile notices, step lines with an ETA, evaluation notices.

Plain lines on stdout, one at most every ``interval`` seconds (and after the first compiled
step and the last step). Keras' ``Progbar`` is not used: on Linux it always redraws one line
with carriage returns and ANSI colours (it treats any POSIX process as an interactive
terminal), so a log file or a pipe receives no complete line until the bar finishes.

The ETA counts the remaining steps at the mean time of the steps after the first one, less
later compilations (so it leaves out tracing and compiling), plus the task's estimate of its
final evaluation.
"""

from __future__ import annotations

import time


def format_seconds(seconds):
    """``1h02m03s`` / ``2m03s``."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class StepProgress:
    """Progress lines of a loop running from ``start_step`` to ``total_steps``.

    Args:
      total_steps: the step the run ends at.
      start_step: the step it starts (or resumes) at.
      interval: seconds between two step lines at most (a line is printed after the step that
        crosses it; steps slower than ``interval`` print one line each).
      final_seconds: ``final_seconds(seconds_per_step) -> seconds``: the estimated duration of
        the work after the last step (the final evaluation), added to the ETA.
      clock: the time source (tests).
    """

    def __init__(self, total_steps, start_step, interval=10.0, final_seconds=None, clock=None):
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.interval = float(interval)
        self.final_seconds = final_seconds or (lambda seconds_per_step: 0.0)
        self.clock = clock or time.time
        self.started = self.clock()
        self._steady_since = None  # (time, step) at the end of the first step
        self._compile_seconds = 0.0  # compilations after the first step (later phases)
        self._last_line = None

    @staticmethod
    def say(text):
        print(text, flush=True)

    def compiling(self, description):
        """Announces the trace of a compiled step; returns the start time for ``compiled``."""
        self.say(
            f"tracing and compiling the {description} (first iteration; this can take minutes) ..."
        )
        return self.clock()

    def compiled(self, since):
        """Announces the end of a compilation started at ``since`` (left out of the ETA)."""
        seconds = self.clock() - since
        if self._steady_since is not None:
            self._compile_seconds += seconds
        self.say(f"... done in {seconds:.1f} s")

    def seconds_per_step(self, step):
        """Mean seconds of the steps after the first (of all steps while there is only one)."""
        now = self.clock()
        if self._steady_since is not None and step > self._steady_since[1]:
            elapsed = now - self._steady_since[0] - self._compile_seconds
            return max(elapsed, 0.0) / (step - self._steady_since[1])
        return (now - self.started) / max(step - self.start_step, 1)

    def eta(self, step):
        """Seconds until the run ends: remaining steps and the final evaluation."""
        per_step = self.seconds_per_step(step)
        return per_step * (self.total_steps - step) + self.final_seconds(per_step)

    def step_done(self, step, epoch_text=""):
        """Records the end of ``step``; prints a line when due."""
        now = self.clock()
        first = self._steady_since is None
        if first:
            self._steady_since = (now, step)
        due = self._last_line is None or now - self._last_line >= self.interval
        if first or due or step >= self.total_steps:
            self._last_line = now
            if first:  # no steady-state time yet: the first step includes the compilation
                timing = f"first step {now - self.started:.1f} s"
            else:
                timing = (
                    f"{self.seconds_per_step(step):.2f} s/step | "
                    f"ETA {format_seconds(self.eta(step))}"
                )
            self.say(f"step {step}/{self.total_steps}{epoch_text} | {timing}")
