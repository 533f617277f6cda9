"""The engine object around the pure step math: extension points, warm-up steps, the learning
rate's dtype, trained weights in the layers, gin configuration (float64, tiny supernets)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from engine_fixtures import make_batches, make_engine

import gin
from ilnas_tf import engine, hypergradient, search_space


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_weight_only_step_keeps_the_architecture_and_trains_the_weights():
    eng = make_engine(engine.InterleavingConfig(num_learners=2, rounds=2, proximal_strength=0.5))
    train, val = make_batches(eng)
    alphas = _values(eng.architecture.parameters)
    weights = _values([item.states[0].encoder_weights for item in eng.learners])
    losses, _ = eng.validation_metrics(val)
    metrics = eng.step(train, val, 0.05, update_architecture=False)
    for before, after in zip(alphas, eng.architecture.parameters):
        np.testing.assert_array_equal(after.numpy(), before)
    for before, item in zip(weights, eng.learners):
        assert np.max(np.abs(item.states[0].encoder_weights.numpy() - before)) > 1e-4
    assert float(metrics["hypergradient_norm"]) == 0.0
    # The validation metrics are those of the weights before the step.
    np.testing.assert_allclose(metrics["val_loss"].numpy(), [float(x) for x in losses])
    assert metrics["train_loss"].shape == (4,)
    # The architecture optimizer took no step.
    assert int(eng.arch_optimizer.iterations.numpy()) == 0


class _PenalisedArchitecture(search_space.Architecture):
    """A extra objective term c * sum(A^2): its gradient 2 c A must be added exactly."""

    strength = 0.3

    def objective_terms(self, parameters):
        return self.strength * tf.add_n([tf.reduce_sum(tf.square(p)) for p in parameters])


def test_architecture_objective_terms_enter_the_hypergradient():
    config = engine.InterleavingConfig(num_learners=2, rounds=1, proximal_strength=0.5)
    plain = make_engine(config)
    train, val = make_batches(plain)
    base, _, _ = plain.arch_gradient(train, val, 0.01)
    penalised = engine.InterleavingEngine(
        _PenalisedArchitecture(steps=4, init_scale=0.5, dtype="float64"),
        plain.learners,
        config,
        shared_stage_functions=False,
    )
    for mine, theirs in zip(penalised.architecture.parameters, plain.architecture.parameters):
        mine.assign(theirs)
    grads, _, _ = penalised.arch_gradient(train, val, 0.01)
    for got, want, alpha in zip(grads, base, plain.architecture.parameters):
        expected = want.numpy() + 2 * _PenalisedArchitecture.strength * alpha.numpy()
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_learning_rate_is_carried_in_the_weights_dtype():
    eng = make_engine(engine.InterleavingConfig(mode="first_order"), classes=(3,))
    problem = eng.problem([], [], 0.025)
    assert problem.learning_rate.dtype == tf.float64
    assert float(problem.learning_rate.numpy()) == 0.025  # not 0.02500000037 (float32)
    with pytest.raises(ValueError, match="learning_rate has dtype float32, expected float64"):
        eng.problem([], [], tf.constant(0.025, tf.float32))


def test_sync_layers_puts_the_trained_weights_into_the_keras_layers():
    eng = make_engine(engine.InterleavingConfig(mode="first_order"), classes=(3,))
    train, val = make_batches(eng)
    item = eng.learners[0]
    initial = _values(item.encoder.trainable_variables)
    eng.step(train, val, 0.1)
    eng.step(train, val, 0.1)
    eng.sync_layers()
    trained = item.encoder_layout.unflatten(item.states[0].encoder_weights)
    for variable, value in zip(item.encoder.trainable_variables, trained):
        np.testing.assert_array_equal(variable.numpy(), value.numpy())
    assert any(
        np.max(np.abs(v.numpy() - b)) > 1e-6
        for v, b in zip(item.encoder.trainable_variables, initial)
    )
    head = item.head_layout.unflatten(item.states[0].head_weights)
    for variable, value in zip(item.head.trainable_variables, head):
        np.testing.assert_array_equal(variable.numpy(), value.numpy())
    # The layers now compute what the flat state computes.
    images, _ = val[0]
    mixing = eng.architecture.mixing(eng.architecture.parameters)
    expected = item.logits(
        item.states[0].encoder_weights, item.states[0].head_weights, mixing, images
    )
    np.testing.assert_allclose(item.head(item.encoder(images, *mixing)).numpy(), expected.numpy())


def test_interleaving_config_is_gin_configurable():
    with gin.unlock_config():
        gin.parse_config(
            "InterleavingConfig.rounds = 3\n"
            "InterleavingConfig.exact_method = 'nested_tapes'\n"
            "InterleavingConfig.hvp_method = 'reverse_over_reverse'"
        )
    try:
        config = engine.InterleavingConfig(num_learners=2)
        assert (config.rounds, config.exact_method, config.hvp_method) == (
            3,
            "nested_tapes",
            "reverse_over_reverse",
        )
        assert len(config.stages) == 6
    finally:
        gin.clear_config()
    assert engine.InterleavingConfig().rounds == 1


def test_hypergradient_functions_are_pure():
    """Same tensors in, same tensors out; the variables are not touched."""
    config = engine.InterleavingConfig(num_learners=2, rounds=2, proximal_strength=0.5)
    eng = make_engine(config, nodes=2)
    train, val = make_batches(eng)
    problem = eng.problem(train, val, 0.01)
    parameters = [tf.convert_to_tensor(p) for p in eng.architecture.parameters]
    before = _values([s.encoder_weights for item in eng.learners for s in item.states])
    first = hypergradient.first_order(problem, parameters)[0]
    again = hypergradient.first_order(problem, parameters)[0]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    states, _ = hypergradient.weight_updates(problem, parameters, [(0, 0), (1, 0), (0, 0), (1, 0)])
    after = _values([s.encoder_weights for item in eng.learners for s in item.states])
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert set(states) == {(0, 0), (1, 0)}


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"weights_per_stage": 1}, "InterleavingConfig.weights_per_stage=1"),
        ({"rounds": 2.0}, "InterleavingConfig.rounds=2.0"),
        ({"interleave_order": "01"}, "InterleavingConfig.interleave_order='01'"),
        ({"arch_beta_1": 1.5}, "InterleavingConfig.arch_beta_1=1.5"),
        ({"hvp_method": "fd"}, "InterleavingConfig.hvp_method='fd'"),
        ({"exact_method": "x"}, "InterleavingConfig.exact_method='x'"),
    ],
)
def test_bad_configuration_values_give_one_clear_message(kwargs, needle):
    with pytest.raises(ValueError) as info:
        engine.InterleavingConfig(**kwargs)
    assert needle in str(info.value) and "expected" in str(info.value)


def test_engine_adds_one_weight_copy_per_round():
    from ilnas_tf import learner

    items = [
        learner.Learner(
            search_space.SearchEncoder(2, 3, steps=2, multiplier=2),
            search_space.ClassifierHead(3),
            (8, 8, 3),
        )
        for _ in range(2)
    ]
    config = engine.InterleavingConfig(num_learners=2, rounds=3)
    assert config.weights_per_stage
    engine.InterleavingEngine(search_space.Architecture(steps=2), items, config)
    for item in items:
        assert len(item.states) == 3
        for state in item.states[1:]:
            np.testing.assert_array_equal(
                state.encoder_weights.numpy(), item.states[0].encoder_weights.numpy()
            )
            assert state.encoder_weights is not item.states[0].encoder_weights
    with pytest.raises(ValueError, match="has 3 weight copies, the config needs 1"):
        engine.InterleavingEngine(
            search_space.Architecture(steps=2),
            items,
            engine.InterleavingConfig(num_learners=2, rounds=3, weights_per_stage=False),
        )
