"""The search command distributed on CPU: MirroredStrategy on 2 logical CPU devices, and
MultiWorkerMirroredStrategy with 2 worker processes on loopback, each compared with a
single-device run on the same global batches.

The comparison is in float32 on 32x32 images with 4 examples per replica, where batch-statistics
batch norm amplifies round-off (how much depends on the CPU's kernels): each checkpoint variable
is compared by its relative difference (``search_fixtures.assert_close_search_variables``, which
gives the measured sizes and those of a run on the wrong examples). The tight equivalence (1e-4
in float32 first order, 1e-9 in float64 exact) is ``test_distributed.py``'s.
"""

from __future__ import annotations

import json
import os

import pytest
from search_fixtures import (
    DEMO,
    ROOT,
    assert_close_search_variables,
    command,
    completed_run,
    final_variables,
    run,
    run_workers,
)

LAUNCHER = (os.path.join(ROOT, "tests", "logical_cpus.py"), "2")
# Demo data and supernet at smoke size, 3 first-order iterations of global batch 8.
BINDINGS = [
    "InterleavingConfig.mode = 'first_order'",
    "run_search.batch_size = 8",
    "run_search.epochs = 1",
    "run_search.steps_per_epoch = 3",
    "run_search.seed = 3",
]


@pytest.fixture(scope="module")
def single_device_run(data_dir, tmp_path_factory):
    root_dir, result = completed_run(tmp_path_factory.mktemp("single"), data_dir, BINDINGS)
    assert "on 1 replica(s)" in result.stdout
    return root_dir


def _assert_same_search(root_dir, reference_dir):
    assert (root_dir / "genotype.json").read_text() == (reference_dir / "genotype.json").read_text()
    results = json.loads((root_dir / "results.json").read_text())
    assert results["steps"] == 3
    values, reference = final_variables(root_dir), final_variables(reference_dir)
    assert any(name.startswith("architecture/") for name in reference)
    assert_close_search_variables(values, reference)


def test_demo_on_two_logical_cpus_matches_one_device(data_dir, single_device_run, tmp_path):
    cmd = command(
        tmp_path, data_dir, *DEMO, "--strategy=mirrored", bindings=BINDINGS, launcher=LAUNCHER
    )
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 replica(s)" in result.stdout
    _assert_same_search(tmp_path, single_device_run)


@pytest.mark.slow  # bash tools/run_tests.sh --slow
def test_two_worker_processes_on_loopback_match_one_process(data_dir, single_device_run, tmp_path):
    cmd = command(tmp_path, data_dir, *DEMO, "--strategy=multi_worker", bindings=BINDINGS)
    outputs = run_workers(cmd)
    assert "on 2 replica(s)" in outputs[0][0]
    _assert_same_search(tmp_path, single_device_run)  # the chief's outputs
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [
        "checkpoints",
        "genotype.dot",
        "genotype.json",
        "genotypes",
        "operative_config.gin",
        "results.json",
        "run.json",
        "summaries",
    ], leftovers
