"""Helpers of the search-command tests: run ``python -m ilnas_tf.search`` on prepared data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import data_fixtures
import numpy as np
import tensorflow as tf

import gin
from ilnas_tf import engine, pr_darts, progressive, search, synthetic_data  # noqa: F401 (gin)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = ["--gin_file=gin/demo.gin", "--gin_file=gin/smoke.gin"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}


def prepare_data_dir(path, scratch):
    """A TFDS data dir with fake cifar10/cifar100 and the synthetic dataset prepared."""
    data_fixtures.prepare_fake_cifar(path, scratch)
    synthetic_data.prepare(path)
    return path


def command(root_dir, data_dir, *args, bindings=(), launcher=(), name="search"):
    """The command line of ``ilnas_tf.<name>`` (``search`` or ``train``; ``launcher``: e.g. the
    logical-CPU launcher and its count), reading data from ``data_dir``."""
    bindings = [f"run_{name}.data_dir = '{data_dir}'", *bindings]
    module = [*launcher, f"ilnas_tf.{name}"] if launcher else ["-m", f"ilnas_tf.{name}"]
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


def run_in_process(gin_files, bindings, root_dir, function=None):
    """``function`` (default ``run_search``) under the gin files (repository-relative) and
    bindings, in this process."""
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    try:
        gin.parse_config_files_and_bindings([os.path.join(ROOT, f) for f in gin_files], bindings)
        return (function or search.run_search)(root_dir=os.fspath(root_dir))
    finally:
        gin.clear_config()


def final_variables(root_dir):
    """Every variable of the latest checkpoint under ``root_dir``: {name: array}."""
    reader = tf.train.load_checkpoint(os.path.join(root_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if not n.startswith("_CHECKPOINTABLE")]
    return {n: reader.get_tensor(n) for n in names}


# Distributed vs. single-device float32 searches (4 examples per replica): each variable's
# difference, as a fraction of the variable's norm. Batch-statistics batch norm over so few
# values amplifies the round-off of synchronised vs. fused moments, the more the deeper the
# supernet; the accumulated momentum and Adam moments show it most. Measured on an AMD EPYC
# without AVX-512: the demo's 3 first-order steps (test_search_distributed.py) differ by <= 3.6e-4
# in the weights, 2.3e-3 in the alphas, 1.5e-2 in Adam's moments and 3.9e-2 in the momentum
# buffers; P-DARTS' deepest stage (test_progressive.py, 2 steps) by <= 9.6e-4, 2.7e-2, 7.1e-2 and
# 1.0e-1. A demo run on the wrong examples (half of each batch) differs by >= 1.2e-2 in the
# weights and by 0.54 to 1.8 in everything else.
WEIGHTS_TOLERANCE = 5e-3
STATE_TOLERANCE = 0.3


def relative_differences(values, reference):
    """{name: ||values[name] - reference[name]|| / ||reference[name]||} (0 where both are 0)."""
    assert values.keys() == reference.keys()
    differences = {}
    for name, value in reference.items():
        error = np.linalg.norm(np.asarray(values[name], np.float64) - value)
        differences[name] = error / np.linalg.norm(value) if error else 0.0
    return differences


def assert_close_search_variables(values, reference):
    """Checkpoint variables of a distributed search against a single-device one: weights within
    ``WEIGHTS_TOLERANCE``, every other variable within ``STATE_TOLERANCE`` (relative norms)."""
    for name, difference in relative_differences(values, reference).items():
        tolerance = WEIGHTS_TOLERANCE if "_weights/" in name else STATE_TOLERANCE
        assert difference < tolerance, f"{name}: relative difference {difference:.2e}"


def _latest_checkpoint_number(root_dir):
    latest = tf.train.latest_checkpoint(root_dir / "checkpoints")
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def wait_for_checkpoint(process, root_dir, number, timeout):
    """Until the ``checkpoint`` state file names checkpoint ``number`` or a later one (the
    files of ``ckpt-N`` appear before the state file names them)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if _latest_checkpoint_number(root_dir) >= number:
            return True
        time.sleep(0.05)
    return False


def kill_after_checkpoint(cmd, root_dir, number, timeout=480):
    """Starts ``cmd``, SIGKILLs it once checkpoint ``number`` exists; returns the latest
    checkpoint number then (asserts that the run got there and wrote no results)."""
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        reached = wait_for_checkpoint(process, root_dir, number, timeout)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert reached, f"the run ended before its checkpoint {number}"
    assert not (root_dir / "results.json").exists()
    return _latest_checkpoint_number(root_dir)


def assert_stopped_keeping_last_good_checkpoint(result, root_dir, message):
    """The run exited non-zero with ``message`` on stderr, no traceback, no results, and named
    its (existing) last good checkpoint."""
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    latest = tf.train.latest_checkpoint(root_dir / "checkpoints")
    assert latest is not None and f"Last good checkpoint: {latest}" in result.stderr
    assert not (root_dir / "results.json").exists()
    reader = tf.train.load_checkpoint(latest)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:  # a good checkpoint: every weight and optimizer state finite
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def free_ports(count):
    """``count`` TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_workers(cmd, count=2, timeout=600):
    """Runs ``cmd`` as ``count`` MultiWorkerMirroredStrategy workers on loopback (TF_CONFIG);
    asserts that each exits 0 and returns their ``(stdout, stderr)`` pairs, chief first."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    workers = []
    for index in range(count):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(config)}
        workers.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=timeout))
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    return outputs
