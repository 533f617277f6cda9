"""Console progress a person can follow: an immediate first line, compile notices, step lines
with an ETA, the announced final evaluation, and no autograph files left in the temp dir."""

from __future__ import annotations

import os
import subprocess
import time

from search_fixtures import DEMO, ENV, ROOT, command

from ilnas_tf import progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_eta_leaves_out_compilation_and_adds_the_final_evaluation(capsys):
    clock = FakeClock()
    reporter = progress.StepProgress(
        10, 0, interval=5.0, final_seconds=lambda per_step: 7 * per_step, clock=clock
    )
    since = reporter.compiling("search step")
    clock.now += 60.0  # the first step: tracing and compiling
    reporter.compiled(since)
    reporter.step_done(1)
    for step in range(2, 5):  # 2 s per step
        clock.now += 2.0
        reporter.step_done(step)
    since = reporter.compiling("search step of the search phase")  # a later phase compiles
    clock.now += 30.0
    reporter.compiled(since)
    clock.now += 2.0
    reporter.step_done(5)
    assert reporter.seconds_per_step(5) == 2.0
    assert reporter.eta(5) == 2.0 * 5 + 7 * 2.0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tracing and compiling the search step (first iteration;")
    assert lines[1] == "... done in 60.0 s"
    assert lines[2] == "step 1/10 | first step 60.0 s"
    # 5 s interval: step 4 (6 s after step 1) prints, steps 2 and 3 do not.
    assert lines[3] == "step 4/10 | 2.00 s/step | ETA 0m26s"
    assert lines[-1] == "step 5/10 | 2.00 s/step | ETA 0m24s"


def test_format_seconds():
    assert progress.format_seconds(83) == "1m23s"
    assert progress.format_seconds(3723) == "1h02m03s"


def test_search_command_reports_progress_and_leaves_no_autograph_files(data_dir, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    bindings = ["InterleavingConfig.mode = 'first_order'", "run_search.warmup_epochs = 1"]
    cmd = command(tmp_path / "run", data_dir, *DEMO, bindings=bindings)
    started = time.time()
    process = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**ENV, "TMPDIR": os.fspath(temp), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = [(time.time() - started, line.rstrip("\n")) for line in process.stdout]
    assert process.wait(timeout=600) == 0
    first_seconds, first = lines[0]
    assert first == "ilnas_tf.search: starting (loading TensorFlow) ...", first
    assert first_seconds < 10.0, first_seconds
    out = [line for _, line in lines]
    assert (
        "tracing and compiling the search step of the warmup phase (first iteration; this can "
        "take minutes) ..." in out
    )
    assert any(
        line.startswith("tracing and compiling the search step of the search phase") for line in out
    )
    assert sum(line.startswith("... done in ") for line in out) >= 3  # 2 compilations, evaluation
    steps = [line for line in out if line.startswith("step ")]
    assert steps[0].startswith("step 1/4 (epoch 1/2, warmup) | first step")
    assert steps[-1].startswith("step 4/4 (epoch 2/2, search) |") and "ETA" in steps[-1]
    assert any(line.startswith("evaluating on the search-val split: ") for line in out)
    assert any(line.startswith("epoch 2/2 step 4/4 |") for line in out)
    leftovers = [name for name in os.listdir(temp) if name.startswith("__autograph_generated")]
    assert not leftovers, leftovers
