"""P-DARTS' progressive search (``progressive``, ``run_search(progressive=True)``): the stage
driver, the rebuilt supernets, the final genotypes and kill-and-resume across stage boundaries.

The pruning and derivation rules themselves are ``test_pdarts.py``'s; the skip-connect dropout
inside the cells is ``test_skip_dropout.py``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf
from search_fixtures import (
    ENV,
    ROOT,
    assert_close_search_variables,
    command,
    final_variables,
    run,
)
from test_search_space import derived_supernet_params

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import pdarts, progressive, summaries

SMOKE_FLAGS = ["--gin_file=gin/demo.gin", "--gin_file=gin/smoke_pdarts.gin"]
# One learner, one round (the chain's K=2, M=2 smoke runs are the every-gin-file and mock-CIFAR
# tests'), first order: each stage compiles in seconds.
PROGRESSIVE = [
    "run_search.progressive = True",
    "run_search.datasets = ('ilnas_synthetic/fine',)",
    "InterleavingConfig.rounds = 1",
    "InterleavingConfig.mode = 'first_order'",
    "run_search.deterministic = True",
]
BINDINGS = [*PROGRESSIVE, "run_search.checkpoint_every_steps = 1"]


def numpy_softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def top_ops(alpha, edge_ops, keep):
    """Each edge's ``keep`` ops of largest softmax weight, in their original order."""
    result = []
    for row, names in zip(numpy_softmax(np.asarray(alpha)), edge_ops):
        chosen = set(np.argsort(-row)[:keep])
        result.append(tuple(n for j, n in enumerate(names) if j in chosen))
    return tuple(result)


# ---------------------------------------------------------------------- the stage driver
def fake_stage_runner(rng, calls, nodes):
    """A ``run_stage`` that records each ``Stage`` and returns random alphas for its space."""
    edges = genotype_lib.num_cell_edges(nodes)

    def run_stage(stage):
        calls.append(stage)
        n_ops = (
            len(genotype_lib.PRIMITIVES)
            if stage.edge_primitives is None
            else len(stage.edge_primitives[0][0])
        )
        alphas = [rng.normal(size=(edges, n_ops)).tolist() for _ in range(2)]
        os.makedirs(stage.root_dir, exist_ok=True)
        results = {
            "alphas": alphas,
            "edge_primitives": stage.edge_primitives,
            "steps": 3,
            "seconds": 1.0,
            "genotype": "",
            "search_val_accuracy": {"a": 0.5 + stage.index},
        }
        with open(os.path.join(stage.root_dir, "results.json"), "w") as handle:
            json.dump(results, handle)
        return results

    return run_stage


def test_stages_grow_the_supernet_and_keep_the_top_ops_of_the_previous_stage(tmp_path):
    schedule = progressive.ProgressiveSchedule(
        ops_kept=(5, 3, 1), add_layers=(0, 6, 12), add_channels=(0, 2, 4)
    ).checked(8, 4)
    calls = []
    results = progressive.run_stages(
        str(tmp_path), schedule, channels=16, layers=5, nodes=4, steps_per_stage=3,
        run_stage=fake_stage_runner(np.random.default_rng(0), calls, 4),
    )  # fmt: skip
    assert [(s.layers, s.channels) for s in calls] == [(5, 16), (11, 18), (17, 20)]
    assert [s.first_step for s in calls] == [0, 3, 6]
    assert [s.skip_dropout for s in calls] == [0.1, 0.4, 0.7]
    assert calls[0].edge_primitives is None
    stage_results = [progressive.read_stage_results(s.root_dir) for s in calls]
    expected = (genotype_lib.PRIMITIVES,) * 14, (genotype_lib.PRIMITIVES,) * 14
    for index, keep in ((1, 5), (2, 3)):
        alphas = stage_results[index - 1]["alphas"]
        expected = tuple(top_ops(alphas[c], expected[c], keep) for c in range(2))
        assert calls[index].edge_primitives == expected
        assert all(len(ops) == keep for cell in expected for ops in cell)
    # The final genotypes: every limit 8..0 written, the chosen one at the top.
    last = stage_results[-1]["alphas"]
    genotypes = pdarts.skip_limited_genotypes(
        np.asarray(last[0]), np.asarray(last[1]), calls[-1].edge_primitives, steps=4
    )
    assert sorted(genotypes) == list(range(9))
    for limit, item in genotypes.items():
        written = (tmp_path / "genotypes" / f"skip_limit_{limit}.json").read_text()
        assert genotype_lib.Genotype.from_json(written) == item
        assert sum(op == "skip_connect" for op, _ in item.normal) <= limit
    final = genotype_lib.Genotype.from_json((tmp_path / "genotype.json").read_text())
    assert final == genotypes[2] and results["genotype"] == final.to_string()
    assert results["steps"] == 9 and results["search_val_accuracy"] == {"a": 2.5}
    assert [s["steps"] for s in results["stages"]] == [3, 3, 3]
    assert not any("alphas" in s for s in results["stages"])


def test_complete_stages_are_skipped_and_inconsistent_ones_refused(tmp_path):
    schedule = progressive.ProgressiveSchedule().checked(8, 2)
    rng = np.random.default_rng(1)
    first = []
    progressive.run_stages(
        str(tmp_path), schedule, channels=4, layers=3, nodes=2, steps_per_stage=2,
        run_stage=fake_stage_runner(rng, first, 2),
    )  # fmt: skip
    final = (tmp_path / "genotype.json").read_text()
    os.remove(tmp_path / "stages" / "stage_3" / "results.json")
    again = []
    progressive.run_stages(
        str(tmp_path), schedule, channels=4, layers=3, nodes=2, steps_per_stage=2,
        run_stage=fake_stage_runner(np.random.default_rng(1), again, 2),
    )  # fmt: skip
    assert [s.index for s in again] == [2]  # only the incomplete stage runs again
    assert again[0].edge_primitives == first[2].edge_primitives
    assert (tmp_path / "genotype.json").read_text() != "" and final
    # A stage searched over other ops than its predecessor kept is refused.
    path = tmp_path / "stages" / "stage_2" / "results.json"
    record = json.loads(path.read_text())
    record["edge_primitives"] = None
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other candidate ops"):
        progressive.run_stages(
            str(tmp_path), schedule, channels=4, layers=3, nodes=2, steps_per_stage=2,
            run_stage=fake_stage_runner(rng, [], 2),
        )  # fmt: skip


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("ops_kept", (5, 5, 1), "strictly decreasing"),
        ("ops_kept", (5, 3, 2), "ending with 1"),
        ("ops_kept", (8, 1), "ops_kept\\[0\\]=8"),
        ("add_layers", (0, 6), "add_layers"),
        ("skip_dropout", (0.1, 1.0, 0.2), "skip_dropout\\[1\\]"),
        ("skip_limit", 9, "skip_limit"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(field, value, expected):
    schedule = progressive.ProgressiveSchedule(**{field: value})
    with pytest.raises(ValueError, match=expected):
        schedule.checked(8, 4)


# ---------------------------------------------------------------------- the search command
@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """An uninterrupted P-DARTS smoke search (3 stages x 4 steps, a checkpoint every step)."""
    root_dir = tmp_path_factory.mktemp("pdarts") / "reference"
    result = run(command(root_dir, data_dir, *SMOKE_FLAGS, bindings=BINDINGS))
    assert result.returncode == 0, result.stderr[-3000:]
    return root_dir, result


def test_rebuilt_supernets_have_the_pruned_ops_and_the_derived_parameter_count(reference_run):
    root_dir, result = reference_run
    assert "P-DARTS stage 3/3: 5 cells, C=2, 3 ops per edge, skip dropout 0.7" in result.stdout
    results = json.loads((root_dir / "results.json").read_text())
    assert results["steps"] == 12 and len(results["stages"]) == 3
    previous, kept = None, (None, 5, 3)
    for index in range(3):
        directory = root_dir / "stages" / f"stage_{index + 1}"
        stage = progressive.read_stage_results(str(directory))
        space = progressive._primitives_of(stage)
        if index == 0:
            assert space is None
        else:
            alphas = previous["alphas"]
            before = progressive._primitives_of(previous) or (
                (genotype_lib.PRIMITIVES,) * 5,
                (genotype_lib.PRIMITIVES,) * 5,
            )
            assert space == tuple(top_ops(alphas[c], before[c], kept[index]) for c in range(2))
        variables = final_variables(directory)
        flat = sum(
            value.size for name, value in variables.items()
            if "learner0_state0" in name and "_weights" in name
        )  # fmt: skip
        layers = 3 + index  # smoke_pdarts.gin: 3, 4 and 5 cells of C=2, 2 nodes
        assert flat == derived_supernet_params(
            2, layers, 10, steps=2, multiplier=2, edge_primitives=space
        )
        alpha = [v for n, v in variables.items() if n.startswith("architecture/alpha_normal")]
        assert alpha[0].shape == (5, 8 if space is None else len(space[0][0]))
        previous = stage
        # TensorBoard: the stage, its skip-dropout schedule and its search space.
        events = summaries.read_events(str(directory / "summaries"))
        assert {v for _, v in events["pdarts/stage"]} == {index + 1}
        rates = [v for _, v in sorted(events["pdarts/skip_dropout_rate"])]
        initial = (0.1, 0.4, 0.7)[index]
        expected = [pdarts.skip_dropout_rate(initial, e, 2, 0) for e in (0, 0, 1, 1)]
        np.testing.assert_allclose(rates, expected, rtol=1e-6)
        text = events["pdarts/ops_per_edge"][0][1]
        assert ("every op" in text) if space is None else (", ".join(space[0][0]) in text)
    final = genotype_lib.Genotype.from_json((root_dir / "genotype.json").read_text())
    assert results["genotype"] == final.to_string()
    assert set(results["genotypes_by_skip_limit"]) == {str(k) for k in range(5)}
    assert sum(op == "skip_connect" for op, _ in final.normal) <= 2
    assert set(results["search_val_accuracy"]) == {"ilnas_synthetic_fine_0"}


def _wait_for(process, condition, timeout=480):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _kill_when(cmd, condition):
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        reached = _wait_for(process, condition)
    finally:
        process.kill()
        process.wait()
    assert reached, "the run ended before the point it was to be killed at"


def test_killed_runs_resume_across_stage_boundaries_bitwise(reference_run, data_dir, tmp_path):
    """SIGKILL right after stage 1 completes, then inside stage 2: the resumed run ends with
    the uninterrupted run's genotypes and bitwise-equal final variables."""
    reference, _ = reference_run
    resumed = tmp_path / "resumed"
    cmd = command(resumed, data_dir, *SMOKE_FLAGS, bindings=BINDINGS)
    stage_1 = resumed / "stages" / "stage_1" / "results.json"
    _kill_when(cmd, stage_1.exists)  # right after the stage transition
    assert not (resumed / "stages" / "stage_2" / "results.json").exists()
    stage_2 = resumed / "stages" / "stage_2" / "checkpoints"
    _kill_when(cmd, lambda: tf.train.latest_checkpoint(str(stage_2)) is not None)
    assert not (resumed / "results.json").exists()
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "P-DARTS stage 1 is complete" in result.stdout
    for name in ["genotype.json"] + [f"genotypes/skip_limit_{k}.json" for k in range(5)]:
        assert (resumed / name).read_text() == (reference / name).read_text(), name
    for index in (2, 3):
        stage = f"stages/stage_{index}"
        mine, theirs = final_variables(resumed / stage), final_variables(reference / stage)
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            np.testing.assert_array_equal(mine[name], value, err_msg=f"{stage}: {name}")


@pytest.mark.slow  # bash tools/run_tests.sh --slow
def test_progressive_search_on_two_logical_cpus_matches_one_device(data_dir, tmp_path):
    """MirroredStrategy over 2 logical CPUs: the stages' noise ids, dropout masks, pruning and
    final genotypes match a single-device run (float32, 4 examples per replica: relative tolerances,
    ``search_fixtures.assert_close_search_variables``)."""
    bindings = [*PROGRESSIVE, "run_search.batch_size = 8", "run_search.max_steps = 2"]
    single = tmp_path / "single"
    result = run(command(single, data_dir, *SMOKE_FLAGS, bindings=bindings))
    assert result.returncode == 0, result.stderr[-3000:]
    mirrored = tmp_path / "mirrored"
    launcher = (os.path.join(ROOT, "tests", "logical_cpus.py"), "2")
    cmd = command(
        mirrored, data_dir, *SMOKE_FLAGS, "--strategy=mirrored", bindings=bindings,
        launcher=launcher,
    )  # fmt: skip
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 replica(s)" in result.stdout
    for name in ["genotype.json"] + [f"genotypes/skip_limit_{k}.json" for k in range(5)]:
        assert (mirrored / name).read_text() == (single / name).read_text(), name
    for index in (1, 2, 3):
        stage = f"stages/stage_{index}"
        mine, theirs = final_variables(mirrored / stage), final_variables(single / stage)
        assert_close_search_variables(mine, theirs)


def test_the_final_genotype_builds_an_evaluation_network(reference_run):
    import keras

    from ilnas_tf import network

    root_dir, _ = reference_run
    genotype = genotype_lib.Genotype.from_json((root_dir / "genotype.json").read_text())
    keras.utils.set_random_seed(0)
    model = network.NetworkCIFAR(4, 10, 3, False, genotype)
    logits = model(tf.zeros((2, 32, 32, 3)), training=False)
    assert logits.shape == (2, 10)


# ---------------------------------------------------------------------- the chain with dropout
@pytest.fixture
def small_images(monkeypatch):
    import engine_fixtures

    monkeypatch.setattr(engine_fixtures, "IMAGE_SHAPE", (8, 8, 3))


@pytest.mark.parametrize("mode", ["stagewise", "nested_tapes", "finite_difference"])
def test_il_chain_hypergradient_with_skip_dropout_matches_finite_differences(mode, small_images):
    """IL K=2, M=2 (exact modes) or DARTS K=1, M=1 (the finite-difference mode with a tiny
    stencil, where it is exact) in float64 with skip-connect dropout at rate 0.5 on a pruned
    (P-DARTS stage-2-like) search space: every evaluation on a batch sees that batch's masks,
    so the hypergradient is the derivative of one function of A (central differences of the
    unrolled objective); the masks change the objective."""
    from engine_fixtures import make_batches, make_engine, randomise_momentum, unrolled_objective

    from ilnas_tf import engine

    if mode == "finite_difference":  # DARTS' K=1, M=1 approximation, exact as eps -> 0
        config = engine.InterleavingConfig(mode="finite_difference", fd_scale=1e-8)
    else:
        config = engine.InterleavingConfig(
            num_learners=2, rounds=2, proximal_strength=0.7, mode="exact", exact_method=mode
        )
    rng = np.random.default_rng(4)
    alphas = [rng.normal(size=(5, 8)) for _ in range(2)]
    for alpha in alphas:
        alpha[:, genotype_lib.PRIMITIVES.index("skip_connect")] = 5.0  # kept on every edge
    space = pdarts.prune_edge_primitives(*alphas, None, 5)
    rate = tf.Variable(tf.constant(0.5, tf.float64), trainable=False)
    eng = make_engine(
        config, classes=(3, 2)[: config.num_learners], channels=2, nodes=2,
        edge_primitives=space, skip_dropout=True, skip_dropout_rate=rate, cell_impl="fused",
    )  # fmt: skip
    for alpha, cell in zip(eng.architecture.alphas, space):  # strong skips: dropout matters
        values = alpha.numpy()
        for e, names in enumerate(cell):
            values[e, names.index("skip_connect")] += 1.0
        alpha.assign(values)
    randomise_momentum(eng)
    train, val = make_batches(eng, batch=4, seed=2, noise=True)
    lr = 0.005
    grads, _, _ = eng.arch_gradient(train, val, lr)
    parameters = [tf.convert_to_tensor(p) for p in eng.architecture.parameters]
    direction = [tf.constant(rng.normal(size=p.shape)) for p in parameters]
    step = 1e-6
    plus, minus = (
        unrolled_objective(
            eng, [p + s * step * d for p, d in zip(parameters, direction)], train, val, lr
        )
        for s in (1.0, -1.0)
    )
    numeric = float(plus - minus) / (2 * step)
    analytic = float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction)))
    assert abs(numeric) > 1e-6
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)
    # The masks matter: without dropout (rate 0) the objective differs.
    base = float(unrolled_objective(eng, parameters, train, val, lr))
    rate.assign(0.0)
    assert abs(float(unrolled_objective(eng, parameters, train, val, lr)) - base) > 1e-6
