"""The search command end to end: gin files, outputs, TensorBoard, resume, errors, NaN.

Most runs go through the real command line (``python -m ilnas_tf.search``) in a subprocess on
tiny supernets (``gin/smoke.gin``); the data are the embedded synthetic dataset and fake CIFAR
prepared by the real TFDS builders (``data_fixtures``) in a temporary TFDS data dir.
Distributed runs (mirrored, multi-worker) are in ``test_search_distributed.py``.
"""

from __future__ import annotations

import glob
import json
import os

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf
from search_fixtures import (
    DEMO,
    ROOT,
    assert_stopped_keeping_last_good_checkpoint,
    command,
    completed_run,
    final_variables,
    kill_after_checkpoint,
    run,
    run_in_process,
)

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import summaries, synthetic_data

# Every search gin file (the train_*.gin files are test_train_cli.py's).
GIN_FILES = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "gin", "*.gin"))
    if not os.path.basename(p).startswith("train_")
)
# The resumable reference run: 2 epochs of 3 steps, a checkpoint after every step; first order
# (compiles in seconds; the exact mode's command-line run is the il_darts test's).
RESUMABLE = [
    "InterleavingConfig.mode = 'first_order'",
    "run_search.deterministic = True",
    "run_search.epochs = 2",
    "run_search.steps_per_epoch = 3",
    "run_search.checkpoint_every_steps = 1",
]


@pytest.fixture(scope="module")
def demo_run(data_dir, tmp_path_factory):
    """The demo (tiny) through the command line, uninterrupted; returns (root_dir, result)."""
    return completed_run(tmp_path_factory.mktemp("demo"), data_dir, RESUMABLE)


def test_shipped_gin_files():
    expected = {"base_search", "darts_1st", "darts_2nd", "il_darts", "mtl_darts", "demo", "smoke"}
    expected |= {"pdarts", "pdarts_cifar100", "mtl_pdarts", "il_pdarts", "smoke_pdarts"}
    expected |= {"prdarts", "mtl_prdarts", "il_prdarts"}
    assert {f"gin/{name}.gin" for name in expected} <= set(GIN_FILES)


def _smoke(gin_file):
    """The smoke overrides for ``gin_file`` (PC-DARTS needs a multiple of 4 channels, P-DARTS'
    stages grow by fewer cells)."""
    if "pcdarts" in gin_file:
        return "gin/smoke_pcdarts.gin"
    return "gin/smoke_pdarts.gin" if "pdarts" in gin_file else "gin/smoke.gin"


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_gin_file_builds_the_run(gin_file, data_dir, tmp_path):
    bindings = [f"run_search.data_dir = '{data_dir}'", "run_search.max_steps = 0"]
    results = run_in_process([gin_file, _smoke(gin_file)], bindings, tmp_path)
    assert results["steps"] == 0
    accuracies = results["search_val_accuracy"]
    assert accuracies and all(0.0 <= a <= 1.0 for a in accuracies.values())
    genotype = genotype_lib.Genotype.from_json((tmp_path / "genotype.json").read_text())
    assert len(genotype.normal) == 2 * 2  # smoke.gin: 2 nodes, 2 inputs each
    channels = 4 if "pcdarts" in gin_file else 2
    assert f"run_search.channels = {channels}" in (tmp_path / "operative_config.gin").read_text()
    if "pdarts" in gin_file and "smoke" not in gin_file:  # P-DARTS: three stages, each built
        assert len(results["stages"]) == 3
        assert sorted(os.listdir(tmp_path / "genotypes")) == sorted(
            f"skip_limit_{k}.{ext}" for k in range(5) for ext in ("json", "dot")
        )


@pytest.mark.slow  # bash tools/run_tests.sh --slow
def test_il_pdarts_runs_on_cifar_served_by_tfds_mock_data(data_dir, tmp_path):
    """IL-PDARTS (K=2, M=2) through three stages on mock CIFAR. First order here: the exact
    chain compiles for minutes per stage on this CPU; the exact (and finite-difference) chain
    with skip-connect dropout is test_progressive.py's float64 check."""
    with data_fixtures.mock_cifar(data_dir, tmp_path / "mock", num_examples=64) as mock_dir:
        results = run_in_process(
            ["gin/il_pdarts.gin", "gin/smoke_pdarts.gin"],
            [f"run_search.data_dir = '{mock_dir}'", "InterleavingConfig.mode = 'first_order'"],
            tmp_path / "run",
        )
    assert results["steps"] == 12  # 3 stages x 2 epochs x 2 steps
    assert set(results["search_val_accuracy"]) == {"cifar100_0", "cifar10_1"}
    for stage in (1, 2, 3):
        directory = tmp_path / "run" / "stages" / f"stage_{stage}"
        assert os.path.exists(directory / "checkpoints" / "ckpt-4.index")
        events = summaries.read_events(os.fspath(directory / "summaries"))
        assert "pdarts/skip_dropout_rate" in events and "search/hypergradient_norm" in events
    genotype = genotype_lib.Genotype.from_json((tmp_path / "run" / "genotype.json").read_text())
    assert sum(op == "skip_connect" for op, _ in genotype.normal) <= 2


@pytest.mark.parametrize(
    "gin_file",
    [
        "gin/il_darts.gin",
        pytest.param("gin/il_pcdarts.gin", marks=pytest.mark.slow),
        pytest.param("gin/il_prdarts.gin", marks=pytest.mark.slow),
    ],
)
def test_il_search_runs_on_cifar_served_by_tfds_mock_data(gin_file, data_dir, tmp_path):
    # PR-DARTS first order: the exact chain through its gates is test_pr_darts.py's check.
    extra = ["InterleavingConfig.mode = 'first_order'"] if "prdarts" in gin_file else []
    with data_fixtures.mock_cifar(data_dir, tmp_path / "mock", num_examples=64) as mock_dir:
        bindings = [f"run_search.data_dir = '{mock_dir}'", *extra]
        results = run_in_process([gin_file, _smoke(gin_file)], bindings, tmp_path / "run")
    assert results["steps"] == 4  # smoke.gin: 2 epochs x 2 steps
    assert set(results["search_val_accuracy"]) == {"cifar100_0", "cifar10_1"}
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "ckpt-4.index")
    assert sorted(os.listdir(tmp_path / "run" / "genotypes")) == [
        "epoch_0001.dot",
        "epoch_0001.json",
        "epoch_0001_alphas.json",
        "epoch_0002.dot",
        "epoch_0002.json",
        "epoch_0002_alphas.json",
    ]
    events = summaries.read_events(os.fspath(tmp_path / "run" / "summaries"))
    betas = "pcdarts" in gin_file  # PC-DARTS' edge betas: checkpointed and summarised
    assert ("betas/normal_heatmap" in events) == betas
    variables = [name for name, _ in tf.train.list_variables(str(tmp_path / "run" / "checkpoints"))]
    assert any("beta_normal" in name for name in variables) == betas
    gates = "prdarts" in gin_file  # PR-DARTS: one gate sample per iteration, tau, regularisers
    assert ("prdarts/L_path" in events and "prdarts/tau" in events) == gates
    if gates:
        reader = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints"))
        assert reader.get_tensor("architecture/draws/.ATTRIBUTES/VARIABLE_VALUE") == 4


def test_demo_command_prints_progress_and_writes_the_outputs(demo_run):
    root_dir, result = demo_run
    out = result.stdout
    assert f"root_dir: {root_dir}" in out
    assert "K=2 learners (ilnas_synthetic/fine, ilnas_synthetic/coarse), M=2 rounds" in out
    assert "epoch 1/2 step 3/6 | ilnas_synthetic_fine_0: train loss" in out and "ETA" in out
    assert "epoch 2/2 step 6/6" in out
    assert f"TensorBoard: tensorboard --logdir {root_dir}/summaries (run {root_dir.name})" in out
    results = json.loads((root_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["resumed_from_step"] == 0
    final = (root_dir / "genotype.json").read_text()
    assert (root_dir / "genotypes" / "epoch_0002.json").read_text() == final
    assert results["genotype"] == genotype_lib.Genotype.from_json(final).to_string()
    assert f"final genotype: {results['genotype']}" in out
    dot = (root_dir / "genotype.dot").read_text()
    assert dot.count("digraph") == 2 and dot.count("->") >= 2 * 2 * 2
    assert (
        "run_search.datasets = ('ilnas_synthetic/fine', 'ilnas_synthetic/coarse')"
        in (root_dir / "operative_config.gin").read_text()
    )


def test_tensorboard_event_files_hold_curves_heatmaps_and_genotype(demo_run):
    root_dir, _ = demo_run
    # One TensorBoard run, named after the run directory (mktemp("demo"): demo0, demo1, ...).
    assert os.listdir(root_dir / "summaries") == [root_dir.name]
    assert glob.glob(os.fspath(root_dir / "summaries" / root_dir.name / "events.out.tfevents.*"))
    events = summaries.read_events(os.fspath(root_dir / "summaries"))
    for name in ("ilnas_synthetic_fine_0", "ilnas_synthetic_coarse_1"):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            steps = [step for step, _ in events[f"learner/{name}/{key}"]]
            assert steps == list(range(1, 7)), (name, key, steps)  # smoke: every step
            assert all(np.isfinite(v) for _, v in events[f"learner/{name}/{key}"])
    for tag in ("learning_rate", "proximal_strength", "hypergradient_norm", "steps_per_second"):
        assert len(events[f"search/{tag}"]) == 6, tag
    assert events["search/proximal_strength"][0][1] == 1.0  # demo.gin: lambda = 1
    # The chain's summaries (K=2, M=2: 4 stages). This run is first order, which has no chain:
    # every value is 0 (the values themselves are tested in tests/test_chain.py).
    for stage in range(4):
        for key in ("hypergradient_norm", "cotangent_norm", "link_gain"):
            values = [v for _, v in events[f"search/stage_{stage}/{key}"]]
            assert values == [0.0] * 6, (stage, key, values)
    assert [v for _, v in events["search/chain_amplification"]] == [0.0] * 6
    rates = [v for _, v in events["search/learning_rate"]]
    assert rates[0] == rates[2] > rates[3] == rates[5]  # cosine schedule, one rate per epoch
    final_alphas = json.loads((root_dir / "results.json").read_text())["alphas"]
    for index, cell in enumerate(("normal", "reduce")):
        heatmaps = events[f"alphas/{cell}_heatmap"]
        assert [step for step, _ in heatmaps] == [3, 6]
        # The labelled heatmap of the last epoch's alphas (smoke: 2 nodes, 5 edges x 8 ops):
        # the most and least probable op differ in colour (red above, blue below uniform).
        image = heatmaps[-1][1]
        probabilities = genotype_lib.softmax(final_alphas[index])
        reference, cells = summaries.heatmap_image(probabilities, with_cells=True)
        assert image.dtype == np.uint8 and image.shape == reference.shape
        fills = {}
        for name, flat in (("top", np.argmax(probabilities)), ("bottom", np.argmin(probabilities))):
            top, left, bottom, right = cells[np.unravel_index(flat, probabilities.shape)]
            fills[name] = image[int(top + 0.25 * (bottom - top)), int((left + right) / 2)]
        assert int(fills["top"][0]) > int(fills["top"][2]), fills
        assert int(fills["bottom"][2]) > int(fills["bottom"][0]), fills
        entropy = [v for _, v in events[f"alphas/{cell}_entropy"]]
        assert all(0.0 < v <= np.log(8) + 1e-6 for v in entropy)
    texts = [text for _, text in events["search/genotype"]]
    final = genotype_lib.Genotype.from_json((root_dir / "genotype.json").read_text())
    assert texts[-1] == final.to_string()


def test_every_epoch_saves_its_alphas(demo_run):
    root_dir, _ = demo_run
    results = json.loads((root_dir / "results.json").read_text())
    records = [
        json.loads((root_dir / "genotypes" / f"epoch_{epoch:04d}_alphas.json").read_text())
        for epoch in (1, 2)
    ]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 3), (2, 6)]
    for record in records:
        assert set(record) == {"epoch", "step", "alphas", "edge_primitives", "edge_weights"}
        assert [np.shape(a) for a in record["alphas"]] == [(5, 8), (5, 8)]  # smoke: 2 nodes
        assert record["edge_primitives"] is None and record["edge_weights"] is None  # DARTS
    assert records[0]["alphas"] != records[1]["alphas"]  # the architecture moved
    assert records[-1]["alphas"] == results["alphas"]  # the last epoch's are the final alphas
    assert records[-1]["edge_primitives"] == results["edge_primitives"]


def test_killed_run_resumes_to_the_same_alphas_and_genotype(demo_run, data_dir, tmp_path):
    reference_dir, _ = demo_run
    cmd = command(tmp_path, data_dir, *DEMO, bindings=RESUMABLE)
    killed_at = kill_after_checkpoint(cmd, tmp_path, 2)
    assert 2 <= killed_at < 6
    result = run(cmd)  # the same command resumes
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["resumed_from_step"] == killed_at and results["steps"] == 6
    assert (tmp_path / "genotype.json").read_text() == (reference_dir / "genotype.json").read_text()
    resumed, reference = final_variables(tmp_path), final_variables(reference_dir)
    assert resumed.keys() == reference.keys()
    alphas = [name for name in reference if name.startswith("architecture/")]
    assert len(alphas) == 2, list(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_killed_warmup_run_resumes_into_the_search_bitwise(demo_run, data_dir, tmp_path):
    bindings = [*RESUMABLE, "run_search.warmup_epochs = 1"]  # steps 1-3 update weights only
    reference_dir, result = completed_run(tmp_path / "reference", data_dir, bindings)
    assert "(1 weight-only warm-up)" in result.stdout
    cmd = command(tmp_path / "resumed", data_dir, *DEMO, bindings=bindings)
    killed_at = kill_after_checkpoint(cmd, tmp_path / "resumed", 1)
    assert 1 <= killed_at <= 3  # a warm-up checkpoint (the search phase compiles at step 4)
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search step of the search phase" in result.stdout
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert results["resumed_from_step"] == killed_at and results["steps"] == 6
    resumed, reference = final_variables(tmp_path / "resumed"), final_variables(reference_dir)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    no_warmup = final_variables(demo_run[0])
    alphas = [name for name in reference if name.startswith("architecture/")]
    assert alphas and all(not np.array_equal(reference[n], no_warmup[n]) for n in alphas)


def test_ablation_split_reports_the_holdout_accuracy(data_dir, tmp_path):
    bindings = [
        f"run_search.data_dir = '{data_dir}'",
        "run_search.split = 'ablation'",
        "run_search.max_steps = 1",
    ]
    results = run_in_process(["gin/demo.gin", "gin/smoke.gin"], bindings, tmp_path)
    assert set(results["holdout_accuracy"]) == set(results["search_val_accuracy"])
    assert all(0.0 <= a <= 1.0 for a in results["holdout_accuracy"].values())
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["holdout_accuracy"] == results["holdout_accuracy"]


def test_binding_the_number_of_learners_is_refused(data_dir, tmp_path):
    bindings = [f"run_search.data_dir = '{data_dir}'", "InterleavingConfig.num_learners = 3"]
    with pytest.raises(ValueError, match=r"InterleavingConfig.num_learners=3 .*len\(run_search"):
        run_in_process(["gin/demo.gin", "gin/smoke.gin"], bindings, tmp_path)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    bindings = [
        # Validation at the current weights and one round: the losses of iteration 1 are taken
        # before any weight moves, so iteration 1 is finite and iteration 2 is not.
        "InterleavingConfig.mode = 'first_order'",
        "InterleavingConfig.rounds = 1",
        "run_search.learning_rate = 1e6",  # finite for a few steps, then NaN
        "run_search.epochs = 4",
        "run_search.checkpoint_every_steps = 1",
    ]
    result = run(command(tmp_path, data_dir, *DEMO, bindings=bindings))
    assert_stopped_keeping_last_good_checkpoint(
        result, tmp_path, "ilnas_tf.search: error: train_loss became"
    )


def _empty_synthetic(tmp_path):
    path = tmp_path / "empty"
    # TFDS refuses to write an empty split: one training example leaves a search half empty.
    synthetic_data.prepare(path, configs=("fine", "coarse"), train_size=1, test_size=1)
    return path


BAD_INPUTS = {
    "unknown_binding": (
        lambda tmp_path, data_dir: command(
            tmp_path, data_dir, bindings=["run_search.nonsense = 3"]
        ),
        ["bad gin configuration", "nonsense"],
    ),
    "gin_syntax_error": (
        lambda tmp_path, data_dir: command(
            tmp_path, data_dir, *DEMO, bindings=["run_search.epochs = ("]
        ),
        ["bad gin configuration in --gin_bindings='run_search.epochs = ('"],
    ),
    "datasets_string": (
        lambda tmp_path, data_dir: command(
            tmp_path, data_dir, *DEMO, bindings=["run_search.datasets = 'ilnas_synthetic/fine'"]
        ),
        ["run_search.datasets='ilnas_synthetic/fine' is invalid: expected a list or tuple"],
    ),
    "missing_dataset": (
        lambda tmp_path, data_dir: command(
            tmp_path,
            tmp_path / "no_data",
            "--gin_file=gin/darts_1st.gin",
            "--gin_file=gin/smoke.gin",
        ),
        ["dataset 'cifar10' is not prepared", "no_data", "download_and_prepare()"],
    ),
    "mismatched_image_shapes": (
        lambda tmp_path, data_dir: command(
            tmp_path, data_dir, bindings=["run_search.datasets = ('cifar10', 'imagenet2012')"]
        ),
        ["learners must share one image shape", "(224, 224, 3)", "(32, 32, 3)"],
    ),
    "unwritable_root_dir": (
        lambda tmp_path, data_dir: command(tmp_path / "a_file" / "run", data_dir, *DEMO),
        ["is not a writable directory", "a_file"],
    ),
    "empty_dataset": (
        lambda tmp_path, data_dir: command(tmp_path / "run", _empty_synthetic(tmp_path), *DEMO),
        ["'ilnas_synthetic/fine'", "examples, fewer than one batch of 4"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_message_and_a_non_zero_exit(case, data_dir, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    make_command, needles = BAD_INPUTS[case]
    result = run(make_command(tmp_path, data_dir), timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("ilnas_tf.search:")]
    for needle in needles:
        assert needle in line, (needle, line)
