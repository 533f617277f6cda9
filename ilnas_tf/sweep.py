"""Experiment sweeps: ``python -m ilnas_tf.sweep --gin_file=sweeps/demo_comparison.gin``.

A sweep gin file binds ``sweep_plan.SweepConfig``: a base search experiment, a grid of gin
bindings and/or named variants, seeds, and optionally a training protocol for each derived
genotype. Every (grid point, seed) is one run in its own directory under ``--root_dir``
(``<root>/<point>/seed_<s>/search``, ``.../train``), made by the ordinary ``ilnas_tf.search``
and ``ilnas_tf.train`` commands in subprocesses, one after another. A rerun skips finished
runs and resumes unfinished ones (each run directory's own contract, ``run_dir``); a failed run
is reported and the sweep goes on with the next. At the end (and with ``--report_only``, on
whatever has finished) the report is written to ``<root>/report`` (``report``).

Flags: ``--gin_file`` (repeatable; the sweep definition), ``--gin_bindings`` (e.g.
``SweepConfig.seeds=[0, 1]``), ``--root_dir`` (default ``./runs/sweep``), ``--strategy``
(passed to every run), ``--print_commands`` (write ``sweep.json`` and print one independent
shell command per run, for a batch scheduler or job array, instead of running them),
``--report_only``. Everything is checked before any run starts: a bad definition gives one
line ``ilnas_tf.sweep: error: ...`` and exit status 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from absl import flags

import gin
from ilnas_tf import cli, sweep_plan

flags.DEFINE_bool("print_commands", False, "Print one shell command per run; run nothing.")
flags.DEFINE_bool("report_only", False, "Write the report of the finished runs; run nothing.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def finished(root_dir):
    """Whether ``root_dir`` holds a complete run (``report.finished_results``)."""
    from ilnas_tf import report

    return report.finished_results(root_dir) is not None


class _Child:
    """The running subprocess. SIGTERM to the sweep is passed on to it (it saves a checkpoint
    and exits 143); SIGINT reaches it from the terminal itself (the sweep waits for it)."""

    process = None

    @classmethod
    def on_signal(cls, signum, frame):
        del frame
        if cls.process is None or cls.process.poll() is not None:
            cli.exit_now(128 + signum)
        if signum == signal.SIGTERM:
            cls.process.send_signal(signum)


def _execute(command):
    """Runs ``command`` (its output goes to this console); returns its exit status."""
    _Child.process = subprocess.Popen(command, cwd=cli.REPO_ROOT)
    try:
        return _Child.process.wait()
    finally:
        _Child.process = None


def execute(runs):
    """Runs every unfinished search and training in order; returns the failed steps."""
    failed, steps = [], []
    for run in runs:  # a run's search, then its trainings
        steps.append((run, None, run.search_dir, run.search_command))
        steps += [(run, d, run.train_dirs[d], c) for d, c in run.train_commands.items()]
    for index, (run, dataset, directory, command) in enumerate(steps, 1):
        what = "search" if directory == run.search_dir else f"training ({dataset or 'default'})"
        prefix = f"ilnas_tf.sweep: [{index}/{len(steps)}] {run.label}: {what}"
        if finished(directory):
            print(f"{prefix}: finished, skipped ({directory})", flush=True)
            continue
        if what != "search" and not finished(run.search_dir):
            print(f"{prefix}: skipped (its search did not finish)", flush=True)
            continue
        state = "resuming" if os.path.exists(os.path.join(directory, "run.json")) else "starting"
        print(f"{prefix}: {state} in {directory}", flush=True)
        began = time.time()
        code = _execute(command)
        if code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT):
            print(f"ilnas_tf.sweep: interrupted during {run.label} ({what}); rerun the same "
                  "command to resume", file=sys.stderr, flush=True)  # fmt: skip
            cli.exit_now(code if code > 0 else 128 - code)
        if code != 0:
            print(f"{prefix}: failed with exit status {code} after {time.time() - began:.0f} s "
                  "(see its output above); going on", flush=True)  # fmt: skip
            failed.append(f"{run.label} ({what})")
    return failed


def run_sweep(root_dir, print_commands=False, report_only=False, strategy=None):
    """Plans, checks and runs (or prints) the sweep bound in gin, then writes its report.

    Returns:
      The failed runs' labels (empty when every run finished).
    """
    config = sweep_plan.SweepConfig()
    runs = sweep_plan.plan(config, root_dir, strategy=strategy)
    root_dir = sweep_plan.check_root(root_dir)
    sweep_plan.write_plan(root_dir, config, runs)
    if print_commands:
        for run in runs:
            print(run.shell_command())
        return []
    failed = [] if report_only else execute(runs)
    from ilnas_tf import report

    paths = report.write_report(root_dir)
    print(f"ilnas_tf.sweep: report: {paths['markdown']} ({paths['runs']} finished runs)")
    return failed


def main(argv):
    del argv
    try:
        root_dir = FLAGS.root_dir or os.path.join(os.getcwd(), "runs", "sweep")
        for name in ("fresh_start", "force_resume"):
            if FLAGS[name].value:
                sys.exit(f"ilnas_tf.sweep: error: --{name} is not a sweep flag (pass it to the "
                         "one run that needs it: see --print_commands)")  # fmt: skip
        gin.add_config_file_search_path(cli.REPO_ROOT)
        if not FLAGS.gin_file:
            sys.exit("ilnas_tf.sweep: error: no --gin_file: expected a sweep definition, e.g. "
                     "--gin_file=sweeps/demo_comparison.gin")  # fmt: skip
        cli.parse_gin("sweep", [sweep_plan.resolve_gin_file(f) for f in FLAGS.gin_file],
                      FLAGS.gin_bindings)  # fmt: skip
    except sweep_plan.SweepError as error:
        sys.exit(f"ilnas_tf.sweep: error: {cli.one_line(error)}")
    signal.signal(signal.SIGTERM, _Child.on_signal)
    signal.signal(signal.SIGINT, _Child.on_signal)
    try:
        with gin.unlock_config():
            failed = run_sweep(root_dir, FLAGS.print_commands, FLAGS.report_only,
                               FLAGS.strategy)  # fmt: skip
    except sweep_plan.SweepError as error:
        sys.exit(f"ilnas_tf.sweep: error: {cli.one_line(error)}")
    if failed:
        print(f"ilnas_tf.sweep: {len(failed)} failed: {'; '.join(failed)}", file=sys.stderr)
        cli.exit_now(1)
    cli.exit_now(0)


def console_main():
    """``python -m ilnas_tf.sweep``."""
    cli.console_main(main, sys.modules[__name__])


if __name__ == "__main__":
    console_main()
