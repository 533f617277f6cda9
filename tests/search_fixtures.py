"""Helpers of the search-command tests: run ``python -m ilnas_tf.search`` on prepared data."""

from __future__ import annotations

import os
import subprocess
import sys

import data_fixtures
import tensorflow as tf

import gin
from ilnas_tf import search, synthetic_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = ["--gin_file=gin/demo.gin", "--gin_file=gin/smoke.gin"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}


def prepare_data_dir(path, scratch):
    """A TFDS data dir with fake cifar10/cifar100 and the synthetic dataset prepared."""
    data_fixtures.prepare_fake_cifar(path, scratch)
    synthetic_data.prepare(path)
    return path


def command(root_dir, data_dir, *args, bindings=(), launcher=()):
    """The search command line (``launcher``: e.g. the logical-CPU launcher and its count)."""
    bindings = [f"run_search.data_dir = '{data_dir}'", *bindings]
    module = [*launcher, "ilnas_tf.search"] if launcher else ["-m", "ilnas_tf.search"]
    return [
        sys.executable,
        *module,
        f"--root_dir={root_dir}",
        *args,
        *(f"--gin_bindings={binding}" for binding in bindings),
    ]


def run(cmd, timeout=600, env=None):
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or ENV
    )


def completed_run(root_dir, data_dir, bindings):
    """The tiny demo through the command line with ``bindings``; returns (root_dir, result)."""
    result = run(command(root_dir, data_dir, *DEMO, bindings=bindings))
    assert result.returncode == 0, result.stderr[-3000:]
    return root_dir, result


def run_in_process(gin_files, bindings, root_dir):
    """``run_search`` under the gin files (repository-relative) and bindings, in this process."""
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    try:
        gin.parse_config_files_and_bindings([os.path.join(ROOT, f) for f in gin_files], bindings)
        return search.run_search(root_dir=os.fspath(root_dir))
    finally:
        gin.clear_config()


def final_variables(root_dir):
    """Every variable of the latest checkpoint under ``root_dir``: {name: array}."""
    reader = tf.train.load_checkpoint(os.path.join(root_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if not n.startswith("_CHECKPOINTABLE")]
    return {n: reader.get_tensor(n) for n in names}
