"""The run loop in process: a search task built by hand through the Python API.

A one-learner first-order search on random 8x8 images: the weight-only warm-up phase keeps
the architecture, resuming starts the search phase, the Keras layers hold the trained weights
afterwards, and the final evaluation agrees with an independent evaluation through the layers.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import engine, learner, run_loop, search_loop, search_space

BATCH, SHAPE, CLASSES = 4, (8, 8, 3), 3


def _batches(seed, count=6):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count * BATCH, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, count * BATCH).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)


def _search(root_dir, max_steps):
    """A fresh task (same seed, same initial values) and loop: 1 warm-up + 1 search epoch."""
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    architecture = search_space.Architecture(steps=2, name="architecture")
    item = learner.Learner(
        search_space.SearchEncoder(2, 3, steps=2, multiplier=2, name="encoder"),
        search_space.ClassifierHead(CLASSES, name="head"),
        SHAPE,
        name="toy",
    )
    config = engine.InterleavingConfig(num_learners=1, mode="first_order")
    eng = engine.InterleavingEngine(architecture, [item], config)
    evaluation = search_loop.Evaluation(
        key="search_val_accuracy",
        label="search-val",
        datasets=[lambda: _batches(2, count=3)],
        batches=3,
        examples=3 * BATCH,
    )
    task = search_loop.SearchTask(
        root_dir=root_dir,
        engine=eng,
        strategy=strategy,
        make_streams=lambda step: [(_batches(0).repeat(), _batches(1).repeat())],
        evaluations=[evaluation],
        learner_names=["toy"],
        epochs=2,
        learning_rate=0.1,
        learning_rate_min=0.01,
        batch_size=BATCH,
    )
    phases = [
        run_loop.Phase("warmup", 1, update_architecture=False),
        run_loop.Phase("search", 1),
    ]
    loop = run_loop.RunLoop(
        task,
        root_dir=root_dir,
        strategy=strategy,
        phases=phases,
        steps_per_epoch=2,
        checkpoint_every_steps=1,
        max_steps=max_steps,
    )
    return task, loop


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _layer_accuracy(item, architecture, dataset):
    """Top-1 accuracy through the Keras layers (not the flat weights)."""
    mixing = architecture.mixing(architecture.parameters)
    hits = count = 0
    for images, labels in dataset:
        logits = item.head(item.encoder(images, mixing[0], mixing[1]))
        hits += int(np.sum(np.argmax(logits.numpy(), -1) == labels.numpy()))
        count += int(labels.shape[0])
    return hits / count


def test_phase_at_counts_global_epochs():
    phases = [run_loop.Phase("warmup", 2, False), run_loop.Phase("search", 3)]
    assert [run_loop.phase_at(phases, e).name for e in range(6)] == ["warmup"] * 2 + ["search"] * 4
    assert run_loop.phase_at([run_loop.Phase("warmup", 0, False), phases[1]], 0).name == "search"


def test_count_correct_counts_top_k():
    logits = tf.constant([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = tf.constant([1, 1, 0])
    assert int(run_loop.count_correct(logits, labels)) == 1
    assert int(run_loop.count_correct(logits, labels, k=2)) == 2


def test_warmup_keeps_the_architecture_then_the_resumed_search_moves_it(tmp_path):
    task, loop = _search(tmp_path, max_steps=2)  # the warm-up epoch only
    alphas = _values(task.engine.architecture.parameters)
    weights = _values(task.engine.learners[0].states[0].variables)
    results = loop.run()
    assert results["steps"] == 2
    for before, after in zip(alphas, _values(task.engine.architecture.parameters)):
        np.testing.assert_array_equal(after, before)
    moved = _values(task.engine.learners[0].states[0].variables)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, moved))

    task, loop = _search(tmp_path, max_steps=None)  # resumes at step 2: the search phase
    results = loop.run()
    assert results["resumed_from_step"] == 2 and results["steps"] == 4
    after = _values(task.engine.architecture.parameters)
    assert all(not np.array_equal(a, b) for a, b in zip(alphas, after))
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 4


def test_after_a_search_the_keras_layers_hold_the_trained_weights(tmp_path):
    task, loop = _search(tmp_path, max_steps=None)
    item = task.engine.learners[0]
    initial = learner.flatten(item.encoder.trainable_variables).numpy()
    results = loop.run()
    state = item.states[-1]
    trained = state.encoder_weights.numpy()
    assert not np.allclose(trained, initial)
    np.testing.assert_array_equal(learner.flatten(item.encoder.trainable_variables), trained)
    np.testing.assert_array_equal(
        learner.flatten(item.head.trainable_variables), state.head_weights.numpy()
    )
    # The final evaluation (flat weights) equals one through the synced Keras layers.
    expected = _layer_accuracy(item, task.engine.architecture, _batches(2, count=3))
    assert results["search_val_accuracy"]["toy"] == pytest.approx(expected)
