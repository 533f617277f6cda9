"""Training under MirroredStrategy on 2 logical CPUs (subprocesses: the CPU is split before
TensorFlow initialises)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from search_fixtures import ENV, ROOT, command, run, run_workers

LAUNCHER = (os.path.join(ROOT, "tests", "logical_cpus.py"), "2")


def test_mirrored_step_equals_the_single_device_step_with_active_clipping(tmp_path):
    out = tmp_path / "check.json"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    result = run([sys.executable, *LAUNCHER, "train_step_check", out], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(out.read_text())
    assert check["replicas"] == 2
    assert check["gradient_norm"] > 2 * check["clip"]  # the clip is active
    np.testing.assert_allclose(check["mirrored_losses"], check["single_losses"], rtol=1e-6)
    for mirrored, single in zip(check["mirrored"], check["single"]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-7)


def test_train_command_on_two_replicas_trains_and_exports(data_dir, tmp_path):
    cmd = command(
        tmp_path, data_dir, "--gin_file=gin/train_demo.gin", "--gin_file=gin/train_smoke.gin",
        "--strategy=mirrored", launcher=LAUNCHER, name="train",
    )  # fmt: skip
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 8 on 2 replica(s)" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 4 and np.isfinite(results["test_loss"])
    serve = tf.saved_model.load(os.fspath(tmp_path / "export" / "saved_model"))
    logits = serve.signatures["serving_default"](images=tf.zeros([2, 32, 32, 3], tf.uint8))
    assert logits["logits"].shape == (2, 10)


@pytest.mark.slow  # bash tools/run_tests.sh --slow
def test_train_command_on_two_worker_processes_trains_and_the_chief_exports(data_dir, tmp_path):
    cmd = command(
        tmp_path, data_dir, "--gin_file=gin/train_demo.gin", "--gin_file=gin/train_smoke.gin",
        "--strategy=multi_worker", name="train",
    )  # fmt: skip
    outputs = run_workers(cmd)
    assert "batch 8 on 2 replica(s)" in outputs[0][0]
    assert "exported:" in outputs[0][0] and "exported:" not in outputs[1][0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 4 and np.isfinite(results["test_loss"])
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [
        "checkpoints",
        "export",
        "model.json",
        "operative_config.gin",
        "results.json",
        "run.json",
        "summaries",
    ], leftovers
