"""TorchSGD against a NumPy transcription of PyTorch's clip_grad_norm_ + SGD.step."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import optimizers, train_loop


def torch_sgd_reference(weights, gradients, learning_rates, momentum, weight_decay, clip):
    """PyTorch semantics: clip the loss gradients' global norm, then d = g + wd * w,
    buf = momentum * buf + d (buf = d at the first step), w -= lr * buf."""
    weights = [w.copy() for w in weights]
    buffers = [np.zeros_like(w) for w in weights]
    for grads, lr in zip(gradients, learning_rates):
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        scale = clip / max(norm, clip) if clip else 1.0
        for i, (w, g) in enumerate(zip(weights, grads)):
            direction = g * scale + weight_decay * w
            buffers[i] = momentum * buffers[i] + direction
            weights[i] = w - lr * buffers[i]
    return weights


RATES = []  # the learning rates of the last run_optimizer call, as the optimizer stored them


def run_optimizer(optimizer, weights, gradients, learning_rates):
    variables = [tf.Variable(w) for w in weights]
    optimizer.build(variables)
    RATES.clear()
    for grads, lr in zip(gradients, learning_rates):
        optimizer.learning_rate.assign(lr)
        RATES.append(float(optimizer.learning_rate.numpy()))  # as stored (float32)
        optimizer.apply([tf.constant(g) for g in grads], variables)
    return [v.numpy() for v in variables]


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    # Steps with small and large gradients, so that clipping is active on some of them only.
    gradients = [[rng.normal(size=w.shape) * s for w in weights] for s in (0.1, 5.0, 0.3, 9.0)]
    learning_rates = [0.1, 0.1, 0.05, 0.02]  # a schedule: the buffer keeps gradients, not steps
    return weights, gradients, learning_rates


def test_torch_sgd_matches_pytorch_semantics(problem):
    weights, gradients, learning_rates = problem
    keras.config.set_floatx("float64")
    try:
        optimizer = optimizers.TorchSGD(
            0.1, momentum=0.9, coupled_weight_decay=3e-4, global_clipnorm=5.0
        )
        got = run_optimizer(optimizer, weights, gradients, learning_rates)
    finally:
        keras.config.set_floatx("float32")
    want = torch_sgd_reference(weights, gradients, RATES, 0.9, 3e-4, 5.0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    # Keras' own SGD (decoupled decay, lr inside the buffer) follows another trajectory.
    keras_sgd = run_optimizer(
        keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=3e-4, global_clipnorm=5.0),
        [w.astype(np.float32) for w in weights],
        gradients,
        learning_rates,
    )
    assert max(np.abs(k - w).max() for k, w in zip(keras_sgd, want)) > 1e-4


def test_torch_sgd_without_momentum_or_clipping(problem):
    weights, gradients, learning_rates = problem
    keras.config.set_floatx("float64")
    try:
        got = run_optimizer(
            optimizers.TorchSGD(0.1, momentum=0.0, coupled_weight_decay=1e-2),
            weights,
            gradients,
            learning_rates,
        )
    finally:
        keras.config.set_floatx("float32")
    want = torch_sgd_reference(weights, gradients, RATES, 0.0, 1e-2, None)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_loss_scaling_unscales_before_clipping(problem):
    weights, gradients, learning_rates = problem
    weights = [w.astype(np.float32) for w in weights]
    plain = run_optimizer(
        optimizers.TorchSGD(0.1, momentum=0.9, coupled_weight_decay=3e-4, global_clipnorm=5.0),
        weights,
        gradients,
        learning_rates,
    )
    scaled_optimizer = keras.optimizers.LossScaleOptimizer(
        optimizers.TorchSGD(0.1, momentum=0.9, coupled_weight_decay=3e-4, global_clipnorm=5.0),
        initial_scale=1024.0,
    )
    scaled = run_optimizer(
        scaled_optimizer, weights, [[g * 1024.0 for g in s] for s in gradients], learning_rates
    )
    for s, p in zip(scaled, plain):
        np.testing.assert_allclose(s, p, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    optimizer = optimizers.TorchSGD(0.05, momentum=0.8, coupled_weight_decay=1e-4)
    clone = optimizers.TorchSGD.from_config(optimizer.get_config())
    assert clone.momentum == 0.8 and clone.coupled_weight_decay == 1e-4
    assert clone.get_config() == optimizer.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_decay": 1e-4}, "coupled_weight_decay"),
        ({"nesterov": True}, "Nesterov"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"coupled_weight_decay": -1.0}, "coupled_weight_decay must be a number >= 0, got -1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizers.TorchSGD(**kwargs)


def test_learning_rate_schedules():
    assert train_loop.learning_rate_at(0, 600, 0.025) == pytest.approx(0.025)
    assert train_loop.learning_rate_at(300, 600, 0.025) == pytest.approx(0.0125)
    assert train_loop.learning_rate_at(600, 600, 0.025) == pytest.approx(0.0, abs=1e-15)
    assert train_loop.learning_rate_at(3, 250, 0.1, "exponential", decay=0.97) == pytest.approx(
        0.1 * 0.97**3
    )
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        train_loop.learning_rate_at(0, 10, 0.1, "step")
