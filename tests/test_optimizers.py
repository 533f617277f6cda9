"""PyTorch's SGD, clip_grad_norm_ and Adam (ilnas_tf.optimizers) against NumPy transcriptions.

The references below transcribe ``torch.optim.SGD.step``, ``torch.nn.utils.clip_grad_norm_``
and ``torch.optim.Adam``'s single-tensor update (``_single_tensor_adam``, PyTorch 2.13, CPU,
no AMSGrad) in float64; the Adam transcription was checked once against PyTorch itself (it
agrees to one unit in the last place). PyTorch is not needed to run these tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import optimizers, train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- NumPy references
def torch_clip(grads, max_norm):
    """clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1."""
    norm = np.sqrt(sum(np.sum(g**2) for g in grads))
    coefficient = min(max_norm / (norm + 1e-6), 1.0)
    return [g * coefficient for g in grads], norm


def torch_sgd_reference(weights, gradients, learning_rates, momentum, weight_decay, clip):
    """PyTorch semantics: clip the loss gradients' global norm, then d = g + wd * w,
    buf = momentum * buf + d (buf = d at the first step), w -= lr * buf."""
    weights = [w.copy() for w in weights]
    buffers = [np.zeros_like(w) for w in weights]
    for grads, lr in zip(gradients, learning_rates):
        if clip:
            grads, _ = torch_clip(grads, clip)
        for i, (w, g) in enumerate(zip(weights, grads)):
            direction = g + weight_decay * w
            buffers[i] = momentum * buffers[i] + direction
            weights[i] = w - lr * buffers[i]
    return weights


def torch_adam_reference(params, gradients, learning_rates, beta_1, beta_2, epsilon, decay):
    """_single_tensor_adam: g += wd p; m.lerp_(g, 1 - b1); v = v b2 + (1 - b2) g g;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    params = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    for step, (grads, lr) in enumerate(zip(gradients, learning_rates), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + decay * p
            weight = 1.0 - beta_1  # torch.lerp switches formula at weight 0.5
            if weight < 0.5:
                ms[i] = ms[i] + weight * (g - ms[i])
            else:
                ms[i] = g - (g - ms[i]) * (1.0 - weight)
            vs[i] = vs[i] * beta_2 + (1.0 - beta_2) * g * g
            denom = np.sqrt(vs[i]) / np.sqrt(1.0 - beta_2**step) + epsilon
            params[i] = p - (lr / (1.0 - beta_1**step)) * (ms[i] / denom)
    return params


def assert_close_lists(got, want, rtol=1e-12, atol=1e-15):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def max_relative(got, want):
    return max(np.max(np.abs(g - w) / np.abs(w)) for g, w in zip(got, want))


RATES = []  # the learning rates of the last run_optimizer call, as the optimizer stored them


def run_optimizer(optimizer, weights, gradients, learning_rates, compiled=False):
    variables = [tf.Variable(w) for w in weights]
    optimizer.build(variables)
    RATES.clear()

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    apply = tf.function(apply) if compiled else apply
    for grads, lr in zip(gradients, learning_rates):
        optimizer.learning_rate.assign(lr)
        RATES.append(float(optimizer.learning_rate.numpy()))  # as stored
        apply([tf.constant(g, v.dtype) for g, v in zip(grads, variables)])
    return [v.numpy() for v in variables]


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    # Steps with small and large gradients, so that clipping is active on some of them only.
    gradients = [[rng.normal(size=w.shape) * s for w in weights] for s in (0.1, 5.0, 0.3, 9.0)]
    learning_rates = [0.1, 0.1, 0.05, 0.02]  # a schedule: the buffer keeps gradients, not steps
    return weights, gradients, learning_rates


@pytest.fixture
def adam_problem():
    """Alphas-like parameters, 5 steps, gradients with tiny entries, a changing learning rate."""
    rng = np.random.default_rng(1)
    params = [rng.normal(size=(14, 8)) * 1e-3, rng.normal(size=(14, 8)) * 1e-3]
    gradients = []
    for _ in range(5):
        step = [rng.normal(size=p.shape) * 1e-2 for p in params]
        for g in step:
            g.flat[:12] *= 1e-6  # small-gradient entries: epsilon's placement matters there
        gradients.append(step)
    return params, gradients, [3e-4, 3e-4, 2e-4, 1e-4, 5e-4]


# ---------------------------------------------------------------- sgd_step
def test_sgd_step_matches_pytorch_sgd_over_several_steps(problem):
    weights, gradients, learning_rates = problem
    state = [(tf.constant(w), tf.zeros_like(tf.constant(w))) for w in weights]
    step = tf.function(optimizers.sgd_step)
    for i, (grads, lr) in enumerate(zip(gradients, learning_rates)):
        function = step if i % 2 else optimizers.sgd_step  # eager and compiled alike
        state = [
            function(w, b, tf.constant(g), tf.constant(lr, tf.float64), 0.9, 3e-4)
            for (w, b), g in zip(state, grads)
        ]
    want = torch_sgd_reference(weights, gradients, learning_rates, 0.9, 3e-4, None)
    assert_close_lists([w.numpy() for w, _ in state], want)


def test_sgd_step_is_differentiable_under_nested_tapes():
    """d/dw sum(c * w'), w' = w - lr (mu b + f'(w) + wd w), f = sum(a w^2) / 2 (2nd order)."""
    a, c = tf.constant([0.5, 2.0, 3.0], tf.float64), tf.constant([1.0, -2.0, 0.5], tf.float64)
    w, b = tf.constant([0.3, -0.1, 0.7], tf.float64), tf.constant([0.2, 0.1, -0.4], tf.float64)
    lr, mu, wd = 0.1, 0.9, 0.01
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([w, b])
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = 0.5 * tf.reduce_sum(a * w**2)
        grad = inner.gradient(loss, w)
        new_w, new_b = optimizers.sgd_step(w, b, grad, lr, mu, wd)
        objective = tf.reduce_sum(c * new_w)
    np.testing.assert_allclose(outer.gradient(objective, w), c * (1 - lr * (a + wd)), rtol=1e-14)
    np.testing.assert_allclose(outer.gradient(objective, b), -lr * mu * c, rtol=1e-14)
    np.testing.assert_allclose(outer.gradient(objective, grad), -lr * c, rtol=1e-14)
    np.testing.assert_allclose(new_b, mu * b + a * w + wd * w, rtol=1e-14)


def test_hyperparameters_are_read_in_the_weights_dtype():
    w = tf.zeros([1], tf.float64)
    new_w, _ = optimizers.sgd_step(w, w, tf.ones([1], tf.float64), 0.025, 0.0, 0.0)
    assert new_w.numpy()[0] == -0.025  # not -0.02500000037252903 (0.025 through float32)
    assert float(tf.cast(0.025, tf.float64)) != 0.025  # the rounding the function avoids


# ---------------------------------------------------------------- clip_by_global_norm
def test_clip_by_global_norm_matches_clip_grad_norm_():
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(3, 4)) * 3, rng.normal(size=(5,)) * 3]
    for max_norm in (1.0, 100.0):  # clipping and not clipping
        clipped, norm = optimizers.clip_by_global_norm([tf.constant(g) for g in grads], max_norm)
        want, want_norm = torch_clip(grads, max_norm)
        assert norm.numpy() == pytest.approx(want_norm, rel=1e-14)
        assert_close_lists([c.numpy() for c in clipped], want, rtol=1e-14)
    for c, g in zip(clipped, grads):
        np.testing.assert_array_equal(c.numpy(), g)  # not clipped: unchanged


def test_clip_by_global_norm_differs_from_tensorflow_by_the_epsilon():
    grads = [tf.constant([3.0, 0.0], tf.float64), tf.constant([[4.0]], tf.float64)]  # norm 5
    clipped, norm = optimizers.clip_by_global_norm(grads, 5.0)
    assert norm.numpy() == 5.0
    tf_clipped, _ = tf.clip_by_global_norm(grads, 5.0)
    assert tf_clipped[0].numpy()[0] == 3.0  # TensorFlow: no scaling at norm == max_norm
    assert clipped[0].numpy()[0] == pytest.approx(3.0 * 5.0 / (5.0 + 1e-6), rel=1e-15)
    assert 1e-7 < 1 - clipped[0].numpy()[0] / 3.0 < 3e-7  # PyTorch: scaled by 1 - 2e-7
    big = [10 * g for g in grads]  # norm 50: both clip, by factors 1e-6 / 50 apart
    ours, _ = optimizers.clip_by_global_norm(big, 5.0)
    theirs, _ = tf.clip_by_global_norm(big, 5.0)
    assert ours[1].numpy()[0, 0] / theirs[1].numpy()[0, 0] == pytest.approx(50 / 50.000001, 1e-15)


def test_clip_by_global_norm_is_differentiable():
    """Central finite differences of a weighted sum of the clipped tensors (float64)."""
    x = np.array([3.0, -4.0, 2.0])
    c = np.array([1.0, 0.5, -2.0])

    def objective(values):
        clipped, _ = optimizers.clip_by_global_norm([values[:2], values[2:], None], 2.0)
        return tf.reduce_sum(c[:2] * clipped[0]) + tf.reduce_sum(c[2:] * clipped[1])

    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        value = objective(tensor)
    grad = tape.gradient(value, tensor).numpy()
    h = 1e-6
    numeric = [
        (objective(tf.constant(x + h * e)) - objective(tf.constant(x - h * e))).numpy() / (2 * h)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- TorchSGD
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


def test_torch_sgd_clips_with_the_torch_formula(problem):
    """Against the tf.clip_by_global_norm formula the clipped steps are ~1e-7 apart."""
    weights, gradients, learning_rates = problem
    optimizer = optimizers.TorchSGD(0.1, momentum=0.0, global_clipnorm=5.0)
    got = run_optimizer(optimizer, weights, gradients[1:2], [0.1], compiled=True)
    clipped, norm = torch_clip(gradients[1], 5.0)
    assert norm > 5.0
    assert_close_lists(got, [w - 0.1 * g for w, g in zip(weights, clipped)], rtol=1e-14)
    tf_style = [w - 0.1 * g * 5.0 / norm for w, g in zip(weights, gradients[1])]
    assert max(np.abs(g - t).max() for g, t in zip(got, tf_style)) > 1e-9


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


def test_torch_sgd_keeps_a_float64_learning_rate_under_float32_floatx(problem):
    weights, gradients, _ = problem
    optimizer = optimizers.TorchSGD(0.025, momentum=0.9, coupled_weight_decay=3e-4)
    got = run_optimizer(optimizer, weights, gradients[:2], [0.025, 0.025])
    assert RATES == [0.025, 0.025]
    want = torch_sgd_reference(weights, gradients[:2], [0.025, 0.025], 0.9, 3e-4, None)
    assert_close_lists(got, want, rtol=1e-14)


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


# ---------------------------------------------------------------- TorchAdam
@pytest.mark.parametrize("beta_1, compiled", [(0.5, False), (0.9, True)])
def test_torch_adam_matches_pytorch_adam(adam_problem, beta_1, compiled):
    params, gradients, learning_rates = adam_problem
    optimizer = optimizers.TorchAdam(3e-4, beta_1=beta_1, coupled_weight_decay=1e-3)
    got = run_optimizer(optimizer, params, gradients, learning_rates, compiled=compiled)
    assert RATES == learning_rates and optimizer.iterations.numpy() == 5
    want = torch_adam_reference(params, gradients, learning_rates, beta_1, 0.999, 1e-8, 1e-3)
    assert_close_lists(got, want, rtol=1e-12, atol=0)


def test_keras_adam_differs_on_small_gradients_at_the_first_step(adam_problem):
    """The test above can tell the two apart: Keras' epsilon sits before the bias correction."""
    params, gradients, _ = adam_problem
    want = torch_adam_reference(params, gradients[:1], [3e-4], 0.5, 0.999, 1e-8, 1e-3)
    decayed = [[g + 1e-3 * p for g, p in zip(gradients[0], params)]]  # the engine's coupled L2
    keras.config.set_floatx("float64")
    try:
        adam = keras.optimizers.Adam(3e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8)
        keras_adam = run_optimizer(adam, params, decayed, [3e-4])
    finally:
        keras.config.set_floatx("float32")
    assert max_relative(keras_adam, want) > 1e-6
    ours = run_optimizer(optimizers.TorchAdam(3e-4), params, gradients[:1], [3e-4])
    assert max_relative(ours, want) < 1e-13


def test_torch_adam_keeps_float64_precision_under_float32_floatx():
    """lr 3e-4 and the beta powers stay float64 although keras.config.floatx() is float32."""
    assert keras.config.floatx() == "float32"
    params = [np.zeros((3,)), np.array([0.5, -1.0, 2.0])]
    gradients = [[np.array([1e-3, -2.0, 3e-7]), np.array([0.1, 0.2, -0.3])] for _ in range(2)]
    optimizer = optimizers.TorchAdam(3e-4, beta_1=0.5, beta_2=0.999, coupled_weight_decay=1e-3)
    got = run_optimizer(optimizer, params, gradients, [3e-4, 3e-4])
    assert optimizer.learning_rate.dtype == "float64" and RATES == [3e-4, 3e-4]
    want = torch_adam_reference(params, gradients, [3e-4, 3e-4], 0.5, 0.999, 1e-8, 1e-3)
    assert_close_lists(got, want, rtol=1e-15, atol=0)
    rounded = float(np.float32(3e-4))  # the learning rate of a float32 variable
    rounded_want = torch_adam_reference(params, gradients, [rounded] * 2, 0.5, 0.999, 1e-8, 1e-3)
    assert max(np.max(np.abs(r - w) / np.abs(w)) for r, w in zip(rounded_want, want)) > 1e-9


def test_torch_adam_config_and_checkpoint_round_trip(adam_problem, tmp_path):
    params, gradients, learning_rates = adam_problem
    optimizer = optimizers.TorchAdam(2e-4, beta_1=0.6, beta_2=0.99, epsilon=1e-7)
    config = keras.saving.serialize_keras_object(optimizer)
    assert config["registered_name"] == "ilnas_tf>TorchAdam"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, optimizers.TorchAdam) and clone.get_config() == optimizer.get_config()
    assert (clone.beta_1, clone.beta_2, clone.epsilon, clone.coupled_weight_decay) == (
        0.6,
        0.99,
        1e-7,
        1e-3,
    )
    # Checkpoint after two steps, restore into a fresh optimizer, take the last three.
    variables = [tf.Variable(p) for p in params]
    optimizer.build(variables)
    for grads in gradients[:2]:
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    path = tf.train.Checkpoint(optimizer=optimizer, variables=variables).write(
        os.fspath(tmp_path / "ckpt")
    )
    restored_variables = [tf.Variable(np.zeros_like(p)) for p in params]
    restored = optimizers.TorchAdam(2e-4, beta_1=0.6, beta_2=0.99, epsilon=1e-7)
    restored.build(restored_variables)
    tf.train.Checkpoint(optimizer=restored, variables=restored_variables).read(path)
    assert restored.iterations.numpy() == 2
    for grads in gradients[2:]:
        for opt, vs in ((optimizer, variables), (restored, restored_variables)):
            opt.apply_gradients(zip([tf.constant(g) for g in grads], vs))
    want = torch_adam_reference(params, gradients, [2e-4] * 5, 0.6, 0.99, 1e-7, 1e-3)
    assert_close_lists([v.numpy() for v in restored_variables], want)
    assert_close_lists([v.numpy() for v in variables], want)


def test_config_round_trip():
    optimizer = optimizers.TorchSGD(0.05, momentum=0.8, coupled_weight_decay=1e-4)
    clone = optimizers.TorchSGD.from_config(optimizer.get_config())
    assert clone.momentum == 0.8 and clone.coupled_weight_decay == 1e-4
    assert clone.get_config() == optimizer.get_config()


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (optimizers.TorchSGD, {"weight_decay": 1e-4}, "coupled_weight_decay"),
        (optimizers.TorchSGD, {"nesterov": True}, "nesterov=True is invalid"),
        (optimizers.TorchSGD, {"momentum": 1.0}, "momentum=1.0 is invalid: expected"),
        (
            optimizers.TorchSGD,
            {"coupled_weight_decay": -1.0},
            "coupled_weight_decay=-1.0 is invalid: expected a finite number >= 0",
        ),
        (optimizers.TorchSGD, {"learning_rate": -0.1}, "learning_rate=-0.1 is invalid"),
        (optimizers.TorchAdam, {"weight_decay": 1e-3}, "coupled_weight_decay"),
        (optimizers.TorchAdam, {"beta_1": 1.0}, "beta_1=1.0 is invalid: expected"),
        (optimizers.TorchAdam, {"beta_2": -0.5}, "beta_2=-0.5 is invalid: expected"),
        (optimizers.TorchAdam, {"epsilon": -1e-8}, "epsilon=-1e-08 is invalid: expected"),
        (optimizers.TorchAdam, {"coupled_weight_decay": True}, "coupled_weight_decay=True"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**kwargs)


def test_learning_rate_schedules():
    assert train_loop.learning_rate_at(0, 600, 0.025) == pytest.approx(0.025)
    assert train_loop.learning_rate_at(300, 600, 0.025) == pytest.approx(0.0125)
    assert train_loop.learning_rate_at(600, 600, 0.025) == pytest.approx(0.0, abs=1e-15)
    assert train_loop.learning_rate_at(3, 250, 0.1, "exponential", decay=0.97) == pytest.approx(
        0.1 * 0.97**3
    )
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        train_loop.learning_rate_at(0, 10, 0.1, "step")


# ---------------------------------------------------------------- MirroredStrategy
MIRRORED_DECAY = 1e-2


def mirrored_adam_check(out_path):
    """Runs in a subprocess with 2 logical CPUs (tests/logical_cpus.py): TorchAdam applied per
    replica, as the engine applies it, inside a tf.function; writes the results as JSON."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    params, per_replica = mirrored_problem()
    with strategy.scope():
        variables = [tf.Variable(p) for p in params]
        optimizer = optimizers.TorchAdam(3e-4, coupled_weight_decay=MIRRORED_DECAY)
        optimizer.build(variables)

    @tf.function
    def step(index):
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads = [tf.constant(g)[index, replica] for g in per_replica]
            optimizer.apply_gradients(zip(grads, variables))

        strategy.run(replica_fn)

    for index in range(3):
        step(tf.constant(index))
    results = {
        "replicas": strategy.num_replicas_in_sync,
        "iterations": int(optimizer.iterations.numpy()),
        "values": [v.numpy().tolist() for v in variables],
    }
    with open(out_path, "w") as f:
        json.dump(results, f)


def mirrored_problem():
    """Parameters and per-replica gradients: arrays [step, replica, ...] per parameter."""
    rng = np.random.default_rng(3)
    params = [rng.normal(size=(4, 3)), rng.normal(size=(2,))]
    per_replica = [rng.normal(size=(3, 2) + p.shape) * 0.01 for p in params]
    return params, per_replica


def test_torch_adam_under_mirrored_strategy_adds_the_decay_once(tmp_path):
    out = tmp_path / "mirrored.json"
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "-1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
    }
    launcher = os.path.join(ROOT, "tests", "logical_cpus.py")
    result = subprocess.run(
        [sys.executable, launcher, "2", "test_optimizers", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(out.read_text())
    assert check["replicas"] == 2 and check["iterations"] == 3
    params, per_replica = mirrored_problem()
    summed = [[g[s].sum(axis=0) for g in per_replica] for s in range(3)]  # Keras sums replicas
    got = [np.array(v) for v in check["values"]]
    want = torch_adam_reference(params, summed, [3e-4] * 3, 0.5, 0.999, 1e-8, MIRRORED_DECAY)
    assert_close_lists(got, want)
    twice = torch_adam_reference(params, summed, [3e-4] * 3, 0.5, 0.999, 1e-8, 2 * MIRRORED_DECAY)
    assert max_relative(got, twice) > 1e-3  # a per-replica decay would be visible


if __name__ == "__main__":
    mirrored_adam_check(sys.argv[1])
