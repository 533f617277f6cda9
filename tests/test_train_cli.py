"""The training command end to end: gin files, outputs, TensorBoard, resume, export, serving.

Runs go through the real command line (``python -m ilnas_tf.train``) in subprocesses on tiny
networks (``gin/train_smoke.gin``) with the embedded synthetic data and fake CIFAR prepared by
the real TFDS builders (``data_fixtures``); the SavedModel is loaded and run in a fresh process
that cannot import the project, and through ``saved_model_cli``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import keras_probabilities
from search_fixtures import (
    ENV,
    ROOT,
    assert_stopped_keeping_last_good_checkpoint,
    command,
    final_variables,
    kill_after_checkpoint,
    run,
    run_in_process,
)

from ilnas_tf import export, run_dir, summaries, train
from ilnas_tf import genotype as genotype_lib

TRAIN = ["--gin_file=gin/train_demo.gin", "--gin_file=gin/train_smoke.gin"]
# 2 epochs of 3 steps, a checkpoint after every step, reproducible.
RESUMABLE = [
    "run_train.deterministic = True",
    "run_train.epochs = 2",
    "run_train.steps_per_epoch = 3",
    "run_train.checkpoint_every_steps = 1",
]
# A 2-node genotype (as the demo search derives), given as a JSON file.
GENOTYPE = genotype_lib.Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("avg_pool_3x3", 0)],
    normal_concat=[2, 3],
    reduce=[("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("dil_conv_3x3", 1)],
    reduce_concat=[2, 3],
)
GIN_FILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "gin", "train_*.gin"))
)
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def train_command(root_dir, data_dir, *args, bindings=(), launcher=()):
    return command(root_dir, data_dir, *args, bindings=bindings, launcher=launcher, name="train")


@pytest.fixture(scope="module")
def genotype_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("genotype") / "genotype.json"
    path.write_text(GENOTYPE.to_json())
    return path


@pytest.fixture(scope="module")
def trained_run(data_dir, genotype_file, tmp_path_factory):
    """The tiny demo trained through the command line, uninterrupted: (root_dir, result)."""
    root_dir = tmp_path_factory.mktemp("train")
    cmd = train_command(
        root_dir, data_dir, *TRAIN, f"--genotype={genotype_file}", bindings=RESUMABLE
    )
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    return root_dir, result


def test_shipped_train_gin_files():
    expected = {"train_cifar10", "train_cifar100", "train_imagenet", "train_demo", "train_smoke"}
    assert {f"gin/{name}.gin" for name in expected} <= set(GIN_FILES)


@pytest.mark.parametrize("gin_file", [f for f in GIN_FILES if f != "gin/train_smoke.gin"])
def test_every_train_gin_file_trains_a_step(gin_file, data_dir, tmp_path):
    bindings = [f"run_train.data_dir = '{data_dir}'", "run_train.max_steps = 1"]
    if gin_file == "gin/train_imagenet.gin":  # no ImageNet here: its protocol on small images
        bindings += [
            "run_train.dataset = 'ilnas_synthetic/fine'",
            "run_train.auxiliary = False",  # the ImageNet auxiliary head needs 224 x 224 inputs
            "run_train.channels = 4",
        ]
    results = run_in_process([gin_file, "gin/train_smoke.gin"], bindings, tmp_path, train.run_train)
    assert results["steps"] == 1
    assert 0.0 <= results["test_accuracy"] <= results["best_test_accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "export" / "saved_model")
    description = export.read_model_description(tmp_path)
    expected_class = "NetworkImageNet" if "imagenet" in gin_file else "NetworkCIFAR"
    assert description["model"]["class_name"] == expected_class
    assert "run_train.channels = " in (tmp_path / "operative_config.gin").read_text()


def test_train_command_prints_progress_and_writes_the_outputs(trained_run):
    root_dir, result = trained_run
    out = result.stdout
    assert f"root_dir: {root_dir}" in out
    assert "NetworkCIFAR C=2, 3 cells" in out and GENOTYPE.to_string() in out
    assert "epoch 1/2 step 3/6 | train loss" in out and "| test loss" in out and "ETA" in out
    results = json.loads((root_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["resumed_from_step"] == 0
    assert results["genotype"] == GENOTYPE.to_string()
    assert f"test accuracy {results['test_accuracy']:.4f}" in out
    assert 0.0 <= results["test_accuracy"] <= results["test_top5_accuracy"] <= 1.0
    description = export.read_model_description(root_dir)
    model = export.build_inference_model(description)
    from ilnas_tf import network

    assert results["parameters"] == network.count_parameters(model) > 0
    assert model.genotype == GENOTYPE and description["dataset"] == "ilnas_synthetic/fine"
    assert results["export"]["saved_model"] == os.fspath(root_dir / "export" / "saved_model")
    assert os.path.isfile(root_dir / "export" / "model.keras")
    assert "run_train.cutout_length = 16" in (root_dir / "operative_config.gin").read_text()


def test_tensorboard_holds_train_and_test_curves(trained_run):
    root_dir, _ = trained_run
    events = summaries.read_events(os.fspath(root_dir / "summaries"))
    for tag in ("train/loss", "train/accuracy", "train/steps_per_second"):
        assert [step for step, _ in events[tag]] == list(range(1, 7)), tag
        assert all(np.isfinite(v) for _, v in events[tag])
    rates = [v for _, v in events["train/learning_rate"]]
    # train_demo.gin: lr 0.05, cosine over 2 epochs, constant within an epoch.
    np.testing.assert_allclose(rates, [0.05] * 3 + [0.025] * 3, rtol=1e-6)
    drop = [v for _, v in events["train/drop_path_rate"]]
    np.testing.assert_allclose(drop, [0.0] * 3 + [0.1] * 3, rtol=1e-6)  # 0.2 * epoch / 2
    for tag in ("test/accuracy", "test/top5", "test/loss"):
        assert [step for step, _ in events[tag]] == [3, 6], tag


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    # Hide the project's editable install (tools/setup_env.sh installs it into the venv).
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
    import numpy as np
    import tensorflow as tf
    try:
        import ilnas_tf  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("the project is importable: this process must not need it")
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    outputs = serve(images=tf.constant(np.load(sys.argv[2])))
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in outputs.items()})
    try:
        serve(images=tf.zeros([2, 28, 28, 3], tf.uint8))
    except tf.errors.InvalidArgumentError as error:
        print("WRONG SHAPE:", " ".join(error.message.split()))
    """
)


def _clean_env():
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    return env


def test_saved_model_serves_the_keras_model_without_project_code(trained_run, tmp_path):
    root_dir, _ = trained_run
    saved_model = root_dir / "export" / "saved_model"
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(SERVE_SCRIPT)
    result = subprocess.run(
        [sys.executable, "serve.py", saved_model, "images.npy", "loaded.npz"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = np.load(tmp_path / "loaded.npz")
    cli = subprocess.run(
        [
            SAVED_MODEL_CLI, "run", "--dir", saved_model, "--tag_set", "serve",
            "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
            "--outdir", tmp_path / "cli", "--overwrite",
        ],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    description = export.read_model_description(root_dir)
    mean, std = description["mean"], description["std"]
    keras_model = keras.saving.load_model(root_dir / "export" / "model.keras")
    restored = export.build_inference_model(description)
    run_dir.restore_model_variables(restored, tf.train.latest_checkpoint(root_dir / "checkpoints"))
    for model in (keras_model, restored):
        probabilities, logits = keras_probabilities(model, images, mean, std)
        for name, want in (("probabilities", probabilities), ("logits", logits)):
            np.testing.assert_allclose(loaded[name], want, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(np.load(tmp_path / "cli" / f"{name}.npy"), want, atol=1e-5)
    assert loaded["logits"].dtype == np.float32 and loaded["logits"].shape == (5, 10)
    np.testing.assert_allclose(loaded["probabilities"].sum(-1), 1.0, rtol=1e-5)
    assert np.ptp(loaded["logits"]) > 0  # a real network, not a constant
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("WRONG SHAPE")]
    assert "expects uint8 images of shape [batch, 32, 32, 3]" in line, line
    assert "[2 28 28 3]" in result.stdout, result.stdout


PREDICT = os.path.join(ROOT, "tools", "predict.py")


def test_predict_tool_serves_uint8_files_and_refuses_pickles_and_floats(trained_run, tmp_path):
    root_dir, _ = trained_run
    saved_model = root_dir / "export" / "saved_model"
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "floats.npy", images.astype(np.float32) / 255)
    for name, needle in (("objects.npy", "not a plain numeric"), ("floats.npy", "expected uint8")):
        refused = run([sys.executable, PREDICT, f"--saved_model={saved_model}",
                       f"--images={tmp_path / name}"])  # fmt: skip
        assert refused.returncode != 0 and needle in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
    served = run([sys.executable, PREDICT, f"--saved_model={saved_model}",
                  f"--images={tmp_path / 'images.npy'}", f"--output={tmp_path / 'out.npz'}"])  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    signature = tf.saved_model.load(os.fspath(saved_model)).signatures["serving_default"]
    want = signature(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["probabilities"], want, atol=1e-6)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "tools/predict.py" in readme and "--inputs images=images.npy" not in readme


def test_signature_is_documented(trained_run):
    root_dir, _ = trained_run
    serve = tf.saved_model.load(os.fspath(root_dir / "export" / "saved_model")).signatures[
        "serving_default"
    ]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == export.SERVING_INPUT and spec.dtype == tf.uint8
    outputs = serve.structured_outputs
    assert set(outputs) == set(export.SERVING_OUTPUTS)
    assert all(o.dtype == tf.float32 and o.shape.as_list() == [None, 10] for o in outputs.values())
    readme = open(os.path.join(ROOT, "README.md")).read()
    for needle in ("`images`", "`probabilities`", "`logits`", "uint8", "float32"):
        assert needle in readme, needle


def test_export_tool_exports_an_earlier_checkpoint(trained_run, tmp_path):
    root_dir, _ = trained_run
    checkpoint = root_dir / "checkpoints" / "ckpt-4"  # max_to_keep 3: 4, 5, 6
    result = run(
        [
            sys.executable, "tools/export_model.py", f"--root_dir={root_dir}",
            f"--checkpoint={checkpoint}", f"--output_dir={tmp_path / 'out'}",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    description = export.read_model_description(root_dir)
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    serve = tf.saved_model.load(os.fspath(tmp_path / "out" / "saved_model")).signatures[
        "serving_default"
    ]
    logits = serve(images=tf.constant(images))["logits"].numpy()
    model = export.build_inference_model(description)
    run_dir.restore_model_variables(model, os.fspath(checkpoint))
    want = keras_probabilities(model, images, description["mean"], description["std"])[1]
    np.testing.assert_allclose(logits, want, atol=1e-5)
    final = tf.saved_model.load(os.fspath(root_dir / "export" / "saved_model"))
    final_logits = final.signatures["serving_default"](images=tf.constant(images))["logits"]
    assert np.abs(final_logits.numpy() - logits).max() > 1e-4  # two more steps changed it
    missing = run([sys.executable, "tools/export_model.py", f"--root_dir={tmp_path}"])
    assert missing.returncode != 0 and "is not a training run directory" in missing.stderr


def test_killed_run_resumes_to_the_same_weights(trained_run, data_dir, genotype_file, tmp_path):
    reference_dir, _ = trained_run
    cmd = train_command(
        tmp_path, data_dir, *TRAIN, f"--genotype={genotype_file}", bindings=RESUMABLE
    )
    killed_at = kill_after_checkpoint(cmd, tmp_path, 2)
    assert 2 <= killed_at < 6
    result = run(cmd)  # the same command resumes
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["resumed_from_step"] == killed_at and results["steps"] == 6
    resumed, reference = final_variables(tmp_path), final_variables(reference_dir)
    assert resumed.keys() == reference.keys()
    seeds = [name for name in reference if "seed_generator_state" in name]
    momentum = [name for name in reference if "momentum" in name]
    assert len(seeds) == 3 and momentum, list(reference)  # drop-path noise, optimizer state
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    bindings = [
        "run_train.learning_rate = 1e30",
        "run_train.grad_clip = 0.0",
        "run_train.checkpoint_every_steps = 1",
    ]
    result = run(train_command(tmp_path, data_dir, *TRAIN, bindings=bindings))
    assert_stopped_keeping_last_good_checkpoint(
        result, tmp_path, "ilnas_tf.train: error: train loss became"
    )


BAD_INPUTS = {
    "unknown_genotype_name": (["--genotype=NOT_A_GENOTYPE"], ["'NOT_A_GENOTYPE'", "DARTS_V2"]),
    "empty_genotype": (["--genotype="], ["genotype '' is invalid", "DARTS_V2"]),
    "bad_genotype_json": (["--genotype={bad_json}"], ["invalid genotype file", "bad.json"]),
    "unknown_op_in_genotype": (["--genotype={bad_op}"], ["invalid genotype file", "conv_9x9"]),
    "unknown_dataset": (
        ["--gin_bindings=run_train.dataset = 'mnist'"],
        ["run_train.dataset='mnist' is invalid", "cifar10"],
    ),
    "unknown_precision": (
        ["--gin_bindings=run_train.mixed_precision = 'fp8'"],
        ["run_train.mixed_precision='fp8' is invalid", "mixed_float16"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_message_and_a_non_zero_exit(case, data_dir, tmp_path):
    (tmp_path / "bad.json").write_text('{"normal": [["sep_conv_3x3", 0]')
    bad_op = json.loads(GENOTYPE.to_json())
    bad_op["normal"][0][0] = "conv_9x9"
    (tmp_path / "bad_op.json").write_text(json.dumps(bad_op))
    args, needles = BAD_INPUTS[case]
    args = [a.format(bad_json=tmp_path / "bad.json", bad_op=tmp_path / "bad_op.json") for a in args]
    result = run(train_command(tmp_path / "run", data_dir, *TRAIN, *args), timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("ilnas_tf.train:")]
    for needle in needles:
        assert needle in line, (needle, line)


def test_mixed_precision_trains_and_exports_float32(data_dir, tmp_path):
    bindings = [
        f"run_train.data_dir = '{data_dir}'",
        "run_train.mixed_precision = 'mixed_bfloat16'",
        "run_train.max_steps = 2",
    ]
    results = run_in_process(
        ["gin/train_demo.gin", "gin/train_smoke.gin"], bindings, tmp_path, train.run_train
    )
    assert np.isfinite(results["test_loss"])
    description = export.read_model_description(tmp_path)
    assert description["model"]["config"]["dtype"]["config"]["name"] == "mixed_bfloat16"
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    serve = tf.saved_model.load(os.fspath(tmp_path / "export" / "saved_model"))
    logits = serve.signatures["serving_default"](images=tf.constant(images))["logits"]
    model = keras.saving.load_model(tmp_path / "export" / "model.keras")
    assert model.dtype_policy.name == "float32" and logits.dtype == tf.float32
    want = keras_probabilities(model, images, description["mean"], description["std"])[1]
    np.testing.assert_allclose(logits.numpy(), want, atol=1e-5)


def test_model_checkpoint_holds_every_variable(tmp_path):
    from ilnas_tf import network

    def build():
        model = network.NetworkCIFAR(2, 10, 3, True, GENOTYPE, seed=0, name="network")
        model.build((None, 32, 32, 3))
        return model

    model = build()
    path = run_dir.model_checkpoint(model).save(os.fspath(tmp_path / "ckpt"))
    saved = [n for n in tf.train.list_variables(path) if "model_variables" in n[0]]
    assert len(saved) == len(model.variables)  # incl. BN statistics and drop-path seed states
    other = build()
    assert any(
        not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, other.variables)
    )
    run_dir.restore_model_variables(other, path)
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
