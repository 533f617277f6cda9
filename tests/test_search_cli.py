"""The search command: every shipped gin file loads and builds with tiny bindings."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

import gin
from ilnas_tf import search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "gin", "*.gin")))
TINY = ["run_search.channels = 2", "run_search.layers = 3", "run_search.batch_size = 2"]


def test_gin_files_exist():
    assert {"gin/base_search.gin", "gin/demo.gin", "gin/il_darts.gin"} <= set(GIN_FILES)


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_gin_file_builds_with_tiny_bindings(gin_file, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([gin_file], TINY)
        report = search.run_search(root_dir=str(tmp_path))
    finally:
        gin.clear_config()
    assert report["architecture_parameters"] == 2 * 14 * 8
    assert report["learners"], report
    for learner in report["learners"]:
        assert learner["logits_shape"] == (2, learner["classes"])
        assert learner["encoder_parameters"] > 0


def test_command_line_runs_the_demo(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ilnas_tf.search",
            "--gin_file=gin/demo.gin",
            f"--root_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"root_dir: {tmp_path}" in result.stdout
    assert "initial genotype: Genotype(normal=[" in result.stdout


def test_unknown_gin_binding_fails_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ilnas_tf.search",
            "--gin_bindings=run_search.nonsense = 3",
            f"--root_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode != 0
    assert "bad gin configuration" in result.stderr and "nonsense" in result.stderr
    assert "Traceback" not in result.stderr
