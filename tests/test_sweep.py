"""The sweep command: a tiny sweep (2 grid points x 2 seeds, smoke sizes, search + training),
part of it run by hand from ``--print_commands``, a killed run resumed by the rerun, finished
runs skipped, the report's table; bad sweep definitions refused before any run starts; every
shipped sweep file plans."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from search_fixtures import ENV, ROOT, wait_for_checkpoint

from ilnas_tf import sweep_plan

POINTS = ("arch_learning_rate=0.0003", "arch_learning_rate=0.003")
SWEEPS = sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.gin")))


def _definition(path, data_dir):
    """A tiny sweep: first-order DARTS (K=1) smoke searches, each trained for 2 steps."""
    path.write_text(
        f"""
SweepConfig.search_gin_files = ['gin/demo.gin', 'gin/smoke.gin']
SweepConfig.search_bindings = [
    "run_search.data_dir = '{data_dir}'",
    "run_search.datasets = ('ilnas_synthetic/coarse',)",
    "run_search.split = 'ablation'",
    'InterleavingConfig.rounds = 1',
    'InterleavingConfig.proximal_strength = 0.0',
    "InterleavingConfig.mode = 'first_order'",
    'run_search.checkpoint_every_steps = 1',
]
SweepConfig.grid = {{'InterleavingConfig.arch_learning_rate': [0.0003, 0.003]}}
SweepConfig.seeds = [0, 1]
SweepConfig.train_gin_files = ['gin/train_demo.gin', 'gin/train_smoke.gin']
SweepConfig.train_bindings = ["run_train.data_dir = '{data_dir}'", 'run_train.export = False']
"""
    )
    return path


def _sweep(definition, root, *flags, timeout=600):
    command = [sys.executable, "-m", "ilnas_tf.sweep", f"--gin_file={definition}",
               f"--root_dir={root}", *flags]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _table(root):
    with open(root / "report" / "summary.csv", newline="") as handle:
        return {row["point"]: row for row in csv.DictReader(handle)}


def _results(directory):
    return json.loads((directory / "results.json").read_text())


def test_tiny_sweep_by_hand_killed_resumed_and_skipped(data_dir, tmp_path):
    definition, root = _definition(tmp_path / "tiny.gin", data_dir), tmp_path / "sweep"
    printed = _sweep(definition, root, "--print_commands")
    assert printed.returncode == 0, printed.stderr[-3000:]
    commands = printed.stdout.strip().splitlines()
    assert len(commands) == 4 and all("ilnas_tf.search" in c for c in commands)
    assert not glob.glob(str(root / "*" / "seed_*"))  # printed only, nothing run

    # The first point's two runs by hand (search, then training), then the report of those.
    for line in commands[:2]:
        result = subprocess.run(line, shell=True, cwd=ROOT, env=ENV, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    partial = _sweep(definition, root, "--report_only")
    assert partial.returncode == 0, partial.stderr[-3000:]
    by_hand = _table(root)[POINTS[0]]
    assert by_hand["finished"] == "2" and _table(root)[POINTS[1]]["finished"] == "0"

    # The sweep skips them and is killed (SIGKILL, with its child) in the next run's search.
    killed = root / POINTS[1] / "seed_0" / "search"
    process = subprocess.Popen(
        [sys.executable, "-m", "ilnas_tf.sweep", f"--gin_file={definition}",
         f"--root_dir={root}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        reached = wait_for_checkpoint(process, killed, 1, timeout=480)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert reached and not (killed / "results.json").exists()
    time.sleep(0.5)

    result = _sweep(definition, root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("finished, skipped") == 4, out  # the hand-made runs' searches, trainings
    assert f"{POINTS[1]} seed 0: search: resuming in {killed}" in out
    assert "resuming from step" in out
    assert _results(killed)["resumed_from_step"] >= 1

    again = _sweep(definition, root)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 8, again.stdout

    # The table: the hand-run point unchanged, the other the hand-computed mean ± std.
    table = _table(root)
    assert table[POINTS[0]] == by_hand
    row = table[POINTS[1]]
    searches = [_results(root / POINTS[1] / f"seed_{s}" / "search") for s in (0, 1)]
    trainings = [_results(root / POINTS[1] / f"seed_{s}" / "train") for s in (0, 1)]
    learner = "ilnas_synthetic_coarse_0"  # K=1; the report names it by its dataset
    for metric, values in (
        (
            "search_val/ilnas_synthetic_coarse",
            [r["search_val_accuracy"][learner] for r in searches],
        ),
        ("holdout/ilnas_synthetic_coarse", [r["holdout_accuracy"][learner] for r in searches]),
        ("test/ilnas_synthetic_fine", [r["test_accuracy"] for r in trainings]),
        ("params_M/ilnas_synthetic_fine", [r["parameters"] / 1e6 for r in trainings]),
    ):
        assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), rel=1e-6), metric
        assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-7)
        assert row[f"{metric}_n"] == "2"
    plots = root / "report" / "plots"
    assert (plots / "search_val_vs_arch_learning_rate.png").stat().st_size > 10_000
    assert len(list((plots / "alphas").glob("*/seed_*_normal.png"))) == 4
    assert len(list((plots / "curves").glob("*.png"))) == 2


def _bad(tmp_path, data_dir, binding):
    definition = _definition(tmp_path / "bad.gin", data_dir)
    root = tmp_path / "bad_root"
    return root, _sweep(definition, root, f"--gin_bindings={binding}", timeout=120)


@pytest.mark.parametrize(
    "binding, message",
    [
        ("SweepConfig.grid = {'InterleavingConfig.arch_learning_rte': [0.1]}",
         "doesn't have a parameter named 'arch_learning_rte'"),
        ("SweepConfig.grid = {}", "the sweep's grid is empty"),
        ("SweepConfig.grid = {'run_search.epochs': []}",
         "SweepConfig.grid['run_search.epochs']=[] is invalid: expected a non-empty list"),
        ("SweepConfig.grid = {'run_search.datasets': ['ilnas_synthetic/fine']}",
         "grid value 'ilnas_synthetic/fine' for run_search.datasets is invalid: expected a "
         "tuple like its base value ('ilnas_synthetic/coarse',)"),
        ("SweepConfig.grid = {'run_search.epochs': [2, 'three']}",
         "grid value 'three' for run_search.epochs is invalid: expected an int like its base "
         "value 2"),
        ("SweepConfig.grid = {'run_search.epochs': [2, 0]}",
         "point epochs=0 (search): run_search.epochs=0 is invalid: expected an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_sweep_input_is_one_line_before_any_run(binding, message, data_dir, tmp_path):
    root, result = _bad(tmp_path, data_dir, binding)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ilnas_tf.sweep: error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    assert not root.exists()


def test_a_root_that_is_a_file_is_refused(data_dir, tmp_path):
    definition, root = _definition(tmp_path / "tiny.gin", data_dir), tmp_path / "a_file"
    root.write_text("not a directory")
    result = _sweep(definition, root, timeout=120)
    assert result.returncode == 1
    assert f"--root_dir='{root}' is a file: expected a directory" in result.stderr
    assert root.read_text() == "not a directory"


def test_shipped_sweeps():
    names = {os.path.basename(path) for path in SWEEPS}
    assert {"ablation_lambda.gin", "ablation_rounds.gin", "ablation_order.gin",
            "demo_comparison.gin"} <= names  # fmt: skip


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_every_shipped_sweep_plans_its_runs(path, tmp_path):
    import gin

    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    try:
        gin.parse_config_file(path)
        config = sweep_plan.SweepConfig()
    finally:
        gin.clear_config()
    runs = sweep_plan.plan(config, str(tmp_path))
    grid = [len(values) for values in config.grid.values()]
    assert len(runs) == int(np.prod(grid)) * max(1, len(config.variants)) * len(config.seeds)
    assert len({run.search_dir for run in runs}) == len(runs)
    for run in runs:
        assert "ilnas_tf.search" in run.shell_command()
        assert len(run.train_commands) == len(config.train_datasets or [None])
