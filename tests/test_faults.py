"""Fault injection: the run directory as a contract (issue: bad inputs, faults, preemption).

* Preemption and crashes: the run loop's toy search (``fault_launcher.py``) is killed with
  SIGKILL at five moments (mid-step, inside a checkpoint write, between checkpoints, inside a
  checkpoint rotation, while writing results.json), stopped with SIGTERM and SIGINT, and its
  newest checkpoint truncated; each time the same command is rerun, and the last run ends
  bitwise equal to an uninterrupted one. One lineage of runs, one fault per process.
* Checkpoint integrity: a diverging search names a checkpoint whose every tensor is finite.
* Run identity: a complete run says so and changes nothing; other settings, or the other
  command, are refused before anything is written (directories checksummed).
* Bad inputs: each gives one line starting with the command's name through ``cli.run`` (in
  this process; ``test_search_cli`` / ``test_train_cli`` run some as subprocesses too) and
  leaves ``root_dir`` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from search_fixtures import ENV, ROOT, final_variables, run_in_process

from ilnas_tf import cli, run_dir, search, train

LAUNCHER = os.path.join(ROOT, "tests", "fault_launcher.py")
SEARCH = ["gin/demo.gin", "gin/smoke.gin"]
FIRST_ORDER = ["InterleavingConfig.mode = 'first_order'", "run_search.checkpoint_every_steps = 1"]


def checksum(root_dir):
    """A digest of every file's path and bytes under ``root_dir``."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root_dir).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _launch(root_dir, fault):
    result = subprocess.run(
        [sys.executable, LAUNCHER, os.fspath(root_dir), fault],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("ilnas_tf.search:")]
    return result, lines


def test_kill9_at_five_moments_sigterm_sigint_and_truncation_resume_bitwise(tmp_path):
    reference, _ = _launch(tmp_path / "reference", "none")
    assert reference.returncode == 0, reference.stderr[-3000:]
    root = tmp_path / "run"
    lineage = [  # (fault, expected exit status, step the next run resumes at)
        ("kill@inputs:1", -9, 0),  # during the first step (compiling): nothing saved
        ("kill@state_file:2", -9, 1),  # inside checkpoint 2's write: not yet named
        ("term@inputs:1", 143, 2),  # SIGTERM during step 2: checkpoint 2 at its end
        ("kill@inputs:2", -9, 3),  # between checkpoints 3 and 4 (the search phase)
        ("kill@sweep", -9, 4),  # inside checkpoint 4's rotation (deleting checkpoint 1)
        ("int@evaluate", 130, 4),  # SIGINT during the final evaluation
        ("kill@results", -9, 3),  # results.json half written (after the truncation below)
    ]
    for index, (fault, code, _) in enumerate(lineage):
        if fault == "kill@results":  # the newest checkpoint torn: fall back to the one before
            data = root / "checkpoints" / "ckpt-4.data-00000-of-00001"
            data.write_bytes(data.read_bytes()[:20])
        result, lines = _launch(root, fault)
        assert result.returncode == code, (fault, result.stderr[-3000:])
        if code in (130, 143):
            (line,) = lines
            assert "rerun the same command to resume" in line, line
            assert line.startswith("ilnas_tf.search: interrupted at step "), line
        previous = lineage[index - 1][2] if index else 0
        if fault == "kill@results":
            assert "ckpt-4 is unreadable" in result.stderr and "falling back" in result.stderr
            previous = 3
        if previous:
            assert f"resuming from step {previous} of 4" in result.stdout, fault
        assert not os.path.exists(root / "results.json"), fault
    result, _ = _launch(root, "none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ckpt-4 is unreadable" not in result.stderr  # set aside by the previous run
    assert "resuming from step 4 of 4" in result.stdout
    resumed, expected = final_variables(root), final_variables(tmp_path / "reference")
    assert resumed.keys() == expected.keys() and len(expected) > 5
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    assert (root / "genotype.json").read_text() == (
        tmp_path / "reference" / "genotype.json"
    ).read_text()
    unreadable = list((root / "checkpoints" / "unreadable").rglob("ckpt-4.*"))
    assert unreadable, "the torn checkpoint is kept aside, not deleted"


@pytest.fixture(scope="module")
def search_run(data_dir, tmp_path_factory):
    """A complete tiny first-order search: (root_dir, bindings)."""
    root_dir = tmp_path_factory.mktemp("search")
    bindings = [f"run_search.data_dir = '{data_dir}'", *FIRST_ORDER]
    run_in_process(SEARCH, bindings, root_dir)
    return root_dir, bindings


@pytest.fixture(scope="module")
def train_run(data_dir, tmp_path_factory):
    """A complete one-step training run, not exported: (root_dir, bindings)."""
    root_dir = tmp_path_factory.mktemp("train")
    bindings = [
        f"run_train.data_dir = '{data_dir}'",
        "run_train.max_steps = 1",
        "run_train.export = False",
    ]
    run_in_process(
        ["gin/train_demo.gin", "gin/train_smoke.gin"], bindings, root_dir, train.run_train
    )
    return root_dir, bindings


def test_diverging_search_names_a_checkpoint_that_is_really_good(data_dir, tmp_path):
    bindings = [
        f"run_search.data_dir = '{data_dir}'",
        *FIRST_ORDER,
        "run_search.learning_rate = 1e6",
        "run_search.epochs = 4",
    ]
    with pytest.raises(Exception, match="Last good checkpoint") as caught:
        run_in_process(SEARCH, bindings, tmp_path)
    named = str(caught.value).split("Last good checkpoint: ")[1].split(" ")[0]
    assert named != "none" and named == tf.train.latest_checkpoint(tmp_path / "checkpoints")
    reader = tf.train.load_checkpoint(named)
    for name, _ in tf.train.list_variables(named):
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_complete_run_rerun_changes_nothing(search_run, capsys):
    root_dir, bindings = search_run
    before = checksum(root_dir)
    results = run_in_process(SEARCH, bindings, root_dir)
    assert "already complete" in capsys.readouterr().out
    assert results == json.loads((root_dir / "results.json").read_text())
    assert checksum(root_dir) == before


@pytest.mark.parametrize(
    "changes",
    [
        [
            "InterleavingConfig.mode = 'exact'",
            "run_search.learning_rate = 0.01",
            "run_search.seed = 3",
            "run_search.epochs = 3",
        ]
    ],
)
def test_other_settings_or_the_other_command_are_refused_untouched(search_run, train_run, changes):
    search_dir, search_bindings = search_run
    train_dir, train_bindings = train_run
    before = checksum(search_dir), checksum(train_dir)
    with pytest.raises(ValueError) as caught:
        run_in_process(SEARCH, search_bindings + changes, search_dir)
    message = str(caught.value)
    for needle in (
        "InterleavingConfig.mode: 'first_order' recorded, 'exact' now",
        "run_search.learning_rate: 0.05 recorded, 0.01 now",
        "run_search.seed: 0 recorded, 3 now",
        "run_search.epochs: 2 recorded, 3 now",
        "--fresh_start",
        "--force_resume",
    ):
        assert needle in message, (needle, message)
    with pytest.raises(ValueError, match="holds a search run, not a training run"):
        run_in_process(["gin/train_demo.gin", "gin/train_smoke.gin"], train_bindings, search_dir,
                       train.run_train)  # fmt: skip
    with pytest.raises(ValueError, match="holds a training run, not a search run"):
        run_in_process(SEARCH, search_bindings, train_dir)
    other_dataset = [*train_bindings, "run_train.dataset = 'ilnas_synthetic/coarse'"]
    with pytest.raises(ValueError, match="run_train.dataset: 'ilnas_synthetic/fine' recorded"):
        run_in_process(["gin/train_demo.gin", "gin/train_smoke.gin"], other_dataset, train_dir,
                       train.run_train)  # fmt: skip
    assert (checksum(search_dir), checksum(train_dir)) == before


def test_force_resume_records_the_change_and_fresh_start_clears(tmp_path):
    settings = {"run_search.seed": "0"}
    state, record = run_dir.check_run(tmp_path, "search", settings)
    assert state == "new"
    run_dir.start_run(tmp_path, "search", settings, state, record)
    (tmp_path / "operative_config.gin").write_text("run_search.seed = 0")
    (tmp_path / "checkpoints").mkdir()
    changed = {"run_search.seed": "1"}
    with pytest.raises(ValueError, match="run_search.seed: 0 recorded, 1 now"):
        run_dir.check_run(tmp_path, "search", changed)
    state, record = run_dir.check_run(tmp_path, "search", changed, force_resume=True)
    run_dir.start_run(tmp_path, "search", changed, state, record, step=7)
    record = run_dir.read_record(tmp_path)
    assert record["fingerprint"] == changed and record["history"][0]["step"] == 7
    assert (tmp_path / "operative_config_until_step_7.gin").exists()
    state, record = run_dir.check_run(tmp_path, "train", {}, fresh_start=True)
    run_dir.start_run(tmp_path, "train", {}, state, record)
    assert not (tmp_path / "checkpoints").exists()
    assert run_dir.read_record(tmp_path)["command"] == "train"
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match="no run record"):
        (tmp_path / "results.json").write_text("{}")
        run_dir.check_run(tmp_path, "train", {})


def test_a_setting_added_later_resumes_at_its_default(tmp_path):
    # A run recorded before run_search.partial_channels existed: resumable with the default.
    old = {"run_search.seed": "0"}
    run_dir.start_run(tmp_path, "search", old, "new", None)
    assert run_dir.check_run(tmp_path, "search", {**old, "run_search.partial_channels": "1"})[
        0
    ] == ("resume")
    with pytest.raises(ValueError, match="run_search.partial_channels: 1 recorded, 4 now"):
        run_dir.check_run(tmp_path, "search", {**old, "run_search.partial_channels": "4"})
    with pytest.raises(ValueError, match="run_search.channels: \\(unset\\) recorded, 8 now"):
        run_dir.check_run(tmp_path, "search", {**old, "run_search.channels": "8"})


def _cli(monkeypatch, module, argv):
    """``module.main`` through ``cli.run`` in this process; returns SystemExit's code."""
    monkeypatch.setattr(cli, "exit_now", lambda code=0: (_ for _ in ()).throw(SystemExit(code)))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cli.FLAGS.unparse_flags()
    cli.FLAGS([f"ilnas_tf.{module.__name__.split('.')[-1]}", *argv])
    try:
        module.main([])
    except SystemExit as exit:
        return exit.code
    finally:
        import gin

        gin.clear_config()
        cli.FLAGS.unparse_flags()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return 0


def _bad_files(tmp_path):
    (tmp_path / "bad_syntax.gin").write_text("run_search.epochs = = 3\n")
    (tmp_path / "latin1.gin").write_bytes(b"# caf\xe9\nrun_search.epochs = 2\n")
    (tmp_path / "latin1.json").write_bytes(b'{"normal": "caf\xe9"}')
    (tmp_path / "a_file").write_text("x")
    return tmp_path


SEARCH_CASES = {  # name: (extra flags, text the line must hold)
    "unbalanced_paren": (["--gin_bindings=run_search.epochs = ("], "--gin_bindings="),
    "double_equals": (["--gin_bindings=run_search.epochs = = 3"], "SyntaxError"),
    "bad_gin_file": (["--gin_file={tmp}/bad_syntax.gin"], "bad_syntax.gin"),
    "missing_gin_file": (["--gin_file={tmp}/nowhere.gin"], "nowhere.gin"),
    "latin1_gin_file": (["--gin_file={tmp}/latin1.gin"], "latin1.gin"),
    "datasets_int": (["--gin_bindings=run_search.datasets = 5"], "run_search.datasets=5"),
    "datasets_str": (
        ["--gin_bindings=run_search.datasets = 'ilnas_synthetic/fine'"],
        "run_search.datasets='ilnas_synthetic/fine' is invalid",
    ),
    "proximal_str": (
        ["--gin_bindings=InterleavingConfig.proximal_strength = 'x'"],
        "InterleavingConfig.proximal_strength='x' is invalid",
    ),
    "lr_none": (
        ["--gin_bindings=run_search.learning_rate = None"],
        "run_search.learning_rate=None",
    ),
    "nodes_zero": (["--gin_bindings=run_search.nodes = 0"], "run_search.nodes=0"),
    "epochs_zero": (["--gin_bindings=run_search.epochs = 0"], "run_search.epochs=0"),
    "max_steps_negative": (["--gin_bindings=run_search.max_steps = -1"], "max_steps=-1"),
    "steps_per_epoch_zero": (["--gin_bindings=run_search.steps_per_epoch = 0"], "=0"),
    "data_dir_file": (["--gin_bindings=run_search.data_dir = '{tmp}/a_file'"], "a_file"),
    "tf_config": (["--strategy=multi_worker"], "TF_CONFIG="),
    "both_flags": (["--fresh_start", "--force_resume"], "not both"),
}
TRAIN_CASES = {
    "empty_genotype": (["--genotype="], "genotype '' is invalid"),
    "latin1_genotype": (["--genotype={tmp}/latin1.json"], "latin1.json"),
    "steps_per_epoch_zero": (["--gin_bindings=run_train.steps_per_epoch = 0"], "=0"),
    "epochs_zero": (["--gin_bindings=run_train.epochs = 0"], "run_train.epochs=0"),
    "momentum_str": (["--gin_bindings=run_train.momentum = 'x'"], "run_train.momentum='x'"),
}


def test_every_bad_input_is_one_line_and_leaves_root_dir_unchanged(
    search_run, train_run, monkeypatch, tmp_path, capsys
):
    _bad_files(tmp_path)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1" "b:2"]}}')
    for module, (root_dir, bindings), cases in (
        (search, search_run, SEARCH_CASES),
        (train, train_run, TRAIN_CASES),
    ):
        gin_files = SEARCH if module is search else ["gin/train_demo.gin", "gin/train_smoke.gin"]
        base = [f"--root_dir={root_dir}", *(f"--gin_file={ROOT}/{f}" for f in gin_files)]
        base += [f"--gin_bindings={b}" for b in bindings]
        before = checksum(root_dir)
        for case, (flags, needle) in cases.items():
            flags = [f.format(tmp=tmp_path) for f in flags]
            if any(f.startswith("--gin_file=") for f in flags):
                base_case = [b for b in base if not b.startswith("--gin_file=")]
            else:
                base_case = base
            code = _cli(monkeypatch, module, [*base_case, *flags])
            command = module.__name__.replace("ilnas_tf.", "ilnas_tf.") + ":"
            assert isinstance(code, str) and code.startswith(command), (case, code)
            assert "\n" not in code and needle in code, (case, needle, code)
            assert checksum(root_dir) == before, case
        capsys.readouterr()
