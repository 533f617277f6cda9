"""The interleaving chain's defaults against the paper and the real dynamics (float64).

The objectives here are written independently of the engine's chain: they run the *real*
update rule (what the weights do when the engine steps them) at a perturbed architecture and
evaluate the validation losses, so the exact hypergradient can equal their finite differences
only if the chain the engine differentiates starts where the real steps start.
"""

from __future__ import annotations

import engine_fixtures
import numpy as np
import pytest
import tensorflow as tf
from engine_fixtures import make_batches, make_engine, randomise_momentum

from ilnas_tf import engine, hypergradient

FD_STEP = 1e-7
LR = 0.05
MOMENTUM, WEIGHT_DECAY = 0.9, 3e-4


@pytest.fixture
def _images_16(monkeypatch):
    """Finite differences need 16x16 images (no ReLU flip inside the stencil)."""
    monkeypatch.setattr(engine_fixtures, "IMAGE_SHAPE", (16, 16, 3))


def _sgd(weights, buffer, grad):
    buffer = MOMENTUM * buffer + grad + WEIGHT_DECAY * weights
    return weights - LR * buffer, buffer


def _real_dynamics_objective(eng, alphas, train, val, lam, closed_form, copies):
    """sum_k L_k^val after one iteration of the real updates at architecture ``alphas``.

    Written from the paper's description, not from the engine: stage s = (round m, learner
    k) takes one SGD step from the *current* value of its weight copy (``copies='stage'``:
    one per (k, m); ``'learner'``: one per learner, stepped M times), pulled toward the
    previous stage's updated encoder P: ``'closed_form'`` W' = (Z + 2 eta lam P)/(1 + 2 eta
    lam) after the plain step Z, else 2 lam (W - P) inside the gradient. No clipping (the
    configs use a clip far above the gradient norms).
    """
    cfg = eng.config
    mixing = eng.architecture.mixing(alphas)
    values = {}
    for k, item in enumerate(eng.learners):
        for m, state in enumerate(item.states):
            values[k, m] = [
                tf.convert_to_tensor(v)
                for v in (
                    state.encoder_weights,
                    state.head_weights,
                    state.encoder_momentum,
                    state.head_momentum,
                )
            ]
    previous = None
    for s, (m, k) in enumerate(cfg.stages):
        key = (k, m if copies == "stage" else 0)
        encoder, head, enc_buf, head_buf = values[key]
        with tf.GradientTape() as tape:
            tape.watch([encoder, head])
            loss, _ = eng.learners[k].loss(encoder, head, mixing, *train[s])
            if previous is not None and not closed_form:
                loss += lam * tf.reduce_sum(tf.square(encoder - previous))
        g_enc, g_head = tape.gradient(loss, [encoder, head])
        encoder, enc_buf = _sgd(encoder, enc_buf, g_enc)
        head, head_buf = _sgd(head, head_buf, g_head)
        if previous is not None and closed_form:
            encoder = (encoder + 2 * LR * lam * previous) / (1 + 2 * LR * lam)
        values[key] = [encoder, head, enc_buf, head_buf]
        previous = encoder
    total = 0.0
    for k, item in enumerate(eng.learners):
        last = cfg.rounds - 1 if copies == "stage" else 0
        encoder, head = values[k, last][:2]
        total += item.loss(encoder, head, mixing, *val[k])[0]
    return float(total)


def _fd_relative_errors(eng, train, val, objective):
    grads, _, _ = eng.arch_gradient(train, val, LR)
    alphas = [tf.convert_to_tensor(a) for a in eng.architecture.parameters]
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(2):
        direction = [tf.constant(rng.normal(size=a.shape)) for a in alphas]
        plus = objective([a + FD_STEP * d for a, d in zip(alphas, direction)])
        minus = objective([a - FD_STEP * d for a, d in zip(alphas, direction)])
        numeric = (plus - minus) / (2 * FD_STEP)
        analytic = float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction)))
        errors.append(abs(analytic - numeric) / abs(numeric))
    return errors


@pytest.mark.usefixtures("_images_16")
@pytest.mark.parametrize("proximal_step", ["closed_form", "gradient"])
def test_default_chain_is_the_real_dynamics(proximal_step):
    """Per-(learner, round) copies (the default): the hypergradient is the derivative of the
    validation loss after the real updates. One copy per learner is not (the round-2 real step
    starts from the round-1 update, the chain's from the same W_k)."""
    lam = 0.7
    config = engine.InterleavingConfig(
        num_learners=2,
        rounds=2,
        proximal_strength=lam,
        grad_clip=1e6,
        proximal_step=proximal_step,
    )
    assert config.weights_per_stage
    eng = make_engine(config, nodes=2)
    randomise_momentum(eng)
    train, val = make_batches(eng, batch=4)
    closed = proximal_step == "closed_form"

    def objective(alphas):
        return _real_dynamics_objective(eng, alphas, train, val, lam, closed, copies="stage")

    assert max(_fd_relative_errors(eng, train, val, objective)) < 1e-4

    shared = make_engine(
        engine.InterleavingConfig(
            num_learners=2,
            rounds=2,
            proximal_strength=lam,
            grad_clip=1e6,
            proximal_step=proximal_step,
            weights_per_stage=False,
        ),
        nodes=2,
    )
    randomise_momentum(shared)

    def shared_objective(alphas):
        return _real_dynamics_objective(shared, alphas, train, val, lam, closed, copies="learner")

    assert min(_fd_relative_errors(shared, train, val, shared_objective)) > 1e-3


def test_handover_carries_across_iterations():
    """K=2, M=1 handover, two weight-only iterations against a hand-computed sequence: each
    stage starts from the encoder the previous stage (of this or the last iteration) left."""
    config = engine.InterleavingConfig(num_learners=2, rounds=1, transfer="handover", grad_clip=1e6)
    eng = make_engine(config, nodes=2)
    iterations = [make_batches(eng, batch=2, seed=seed) for seed in (1, 2)]
    mixing = eng.architecture.mixing([tf.convert_to_tensor(a) for a in eng.architecture.alphas])
    state = {
        k: [tf.convert_to_tensor(v) for v in (s.encoder_weights, s.head_weights)]
        + [tf.zeros_like(s.encoder_weights), tf.zeros_like(s.head_weights)]
        for k, s in enumerate(item.states[0] for item in eng.learners)
    }
    carried = state[1][0]  # before iteration 1 the last stage's copy holds learner 1's init
    for train, _ in iterations:
        for k in range(2):
            _, head, enc_buf, head_buf = state[k]
            encoder = carried
            with tf.GradientTape() as tape:
                tape.watch([encoder, head])
                loss, _ = eng.learners[k].loss(encoder, head, mixing, *train[k])
            g_enc, g_head = tape.gradient(loss, [encoder, head])
            encoder, enc_buf = _sgd(encoder, enc_buf, g_enc)
            head, head_buf = _sgd(head, head_buf, g_head)
            state[k] = [encoder, head, enc_buf, head_buf]
            carried = encoder
    for train, val in iterations:
        eng.step(train, val, LR, update_architecture=False)
    for k, item in enumerate(eng.learners):
        np.testing.assert_allclose(
            item.states[0].encoder_weights.numpy(), state[k][0].numpy(), rtol=1e-12, atol=1e-14
        )
        np.testing.assert_allclose(
            item.states[0].head_weights.numpy(), state[k][1].numpy(), rtol=1e-12, atol=1e-14
        )
    # Iteration 2's first stage did not start from learner 0's own (stale) encoder.
    assert not np.allclose(state[0][0].numpy(), eng.learners[1].states[0].encoder_weights.numpy())


def test_closed_form_step_stays_between_the_plain_step_and_the_pull():
    """At the paper's lambda=100, eta=0.025 the closed-form W̄ lies on the segment from the
    plain step Z to P (never overshoots); the literal gradient step overshoots P by ~4x."""
    lam, lr = 100.0, 0.025
    results = {}
    for proximal_step in ("closed_form", "gradient"):
        config = engine.InterleavingConfig(
            num_learners=2, rounds=1, proximal_strength=lam, proximal_step=proximal_step
        )
        eng = make_engine(config, nodes=2)
        train, val = make_batches(eng, batch=2)
        problem = eng.problem(train, val, tf.constant(lr, tf.float64))
        chain = hypergradient.unrolled_chain(
            problem, [tf.convert_to_tensor(a) for a in eng.architecture.alphas]
        )
        results[proximal_step] = (eng, problem, chain)
    eng, problem, chain = results["closed_form"]
    pull_target = chain[0][0].numpy()
    # Z: the stage-1 step without the pull (lambda = 0 gives exactly that step).
    plain = make_engine(engine.InterleavingConfig(num_learners=2, rounds=1), nodes=2)
    plain_chain = hypergradient.unrolled_chain(
        plain.problem(*make_batches(plain, batch=2), tf.constant(lr, tf.float64)),
        [tf.convert_to_tensor(a) for a in plain.architecture.alphas],
    )
    z = plain_chain[1][0].numpy()
    w_bar = chain[1][0].numpy()
    t = 1.0 / (1.0 + 2 * lr * lam)
    np.testing.assert_allclose(w_bar - pull_target, t * (z - pull_target), rtol=1e-10, atol=1e-13)
    assert 0 < t < 1
    start = problem.starts[1].encoder.numpy()
    literal = results["gradient"][2][1][0].numpy()
    # The literal step: W - eta * 2 lambda (W - P) + ... = P + (1 - 2 eta lambda)(W - P) + ...
    # overshoots: it lands on the far side of P from W, ~4x as far.
    assert np.dot(literal - pull_target, start - pull_target) < 0
    assert np.linalg.norm(literal - pull_target) > 2 * np.linalg.norm(start - pull_target)


def test_mtl_clips_one_joint_objective():
    """MTL (M=1, lambda=0): one global norm over both learners' gradients (the paper's eq. 10
    is one objective); with grad_clip_scope='stage' each learner is clipped separately."""
    clip = 0.05
    steps = {}
    for scope in ("auto", "stage"):
        config = engine.InterleavingConfig(
            num_learners=2, rounds=1, grad_clip=clip, grad_clip_scope=scope
        )
        eng = make_engine(config, nodes=2)
        train, _ = make_batches(eng, batch=2)
        before = [
            (tf.convert_to_tensor(s.encoder_weights), tf.convert_to_tensor(s.head_weights))
            for s in (item.states[0] for item in eng.learners)
        ]
        mixing = eng.architecture.mixing([tf.convert_to_tensor(a) for a in eng.architecture.alphas])
        grads = []
        for k, (encoder, head) in enumerate(before):
            with tf.GradientTape() as tape:
                tape.watch([encoder, head])
                loss, _ = eng.learners[k].loss(encoder, head, mixing, *train[k])
            grads.append([g.numpy() for g in tape.gradient(loss, [encoder, head])])
        eng.weight_step(train, LR)
        steps[scope] = (eng, before, grads)
    eng, before, grads = steps["auto"]
    joint = np.sqrt(sum(np.sum(g**2) for pair in grads for g in pair))
    assert joint > clip
    coefficient = clip / (joint + 1e-6)
    for k, item in enumerate(eng.learners):
        for value, start, grad in zip(
            (item.states[0].encoder_weights, item.states[0].head_weights), before[k], grads[k]
        ):
            expected, _ = _sgd(start.numpy(), 0.0, coefficient * grad)
            np.testing.assert_allclose(value.numpy(), expected, rtol=1e-12, atol=1e-14)
    separate, _, grads = steps["stage"]
    norm = np.sqrt(sum(np.sum(g**2) for g in grads[0]))
    expected, _ = _sgd(before[0][0].numpy(), 0.0, min(1, clip / (norm + 1e-6)) * grads[0][0])
    np.testing.assert_allclose(
        separate.learners[0].states[0].encoder_weights.numpy(), expected, rtol=1e-12, atol=1e-14
    )
    assert norm < joint  # so the two scopes really differ


def test_stage_parts_and_direct_part_make_the_hypergradient():
    """Sum of the per-stage parts + the direct validation part (∂L/∂A at fixed W̄) = dL/dA."""
    config = engine.InterleavingConfig(num_learners=2, rounds=2, proximal_strength=0.7)
    eng = make_engine(config, nodes=2)
    train, val = make_batches(eng, batch=2)
    result = eng.arch_gradient_result(train, val, LR)
    problem = eng.problem(train, val, LR)
    alphas = [tf.convert_to_tensor(a) for a in eng.architecture.parameters]
    chain = hypergradient.unrolled_chain(problem, alphas, differentiable=False)
    finals = [chain[config.last_stage(k)] for k in range(2)]
    with tf.GradientTape() as tape:
        tape.watch(alphas)
        total, _, _ = hypergradient.validation_objective(problem, alphas, finals)
    direct = tape.gradient(total, alphas)
    assert all(part is not None for part in result.stage_parts)
    for i, grad in enumerate(result.gradients):
        summed = direct[i] + sum(part[i] for part in result.stage_parts)
        np.testing.assert_allclose(grad.numpy(), summed.numpy(), rtol=1e-10, atol=1e-13)
    metrics = engine.chain_diagnostics(result, len(config.stages))
    norms = [float(tf.linalg.global_norm(part)) for part in result.stage_parts]
    np.testing.assert_allclose(metrics["stage_hypergradient_norms"].numpy(), norms, rtol=1e-12)
    gains = metrics["chain_link_gains"].numpy()
    np.testing.assert_allclose(float(metrics["chain_amplification"]), np.prod(gains[1:]))


def test_chain_amplification_shows_the_literal_step_exploding():
    """lambda=100, eta=0.025: each link of the literal gradient step's chain multiplies the
    cotangent that reaches W̄_{s-1} by 2 eta lambda = 5 (T=1: v_prev = 2 lambda eta v), the
    closed-form link by 5/6; the diagnostics say so."""
    amplification = {}
    for proximal_step in ("closed_form", "gradient"):
        config = engine.InterleavingConfig(
            num_learners=2, rounds=2, proximal_strength=100.0, proximal_step=proximal_step
        )
        eng = make_engine(config, nodes=2)
        train, val = make_batches(eng, batch=2)
        result = eng.arch_gradient_result(train, val, tf.constant(0.025, tf.float64))
        metrics = engine.chain_diagnostics(result, len(config.stages))
        amplification[proximal_step] = metrics["chain_link_gains"].numpy()
    np.testing.assert_allclose(amplification["gradient"], [0, 5, 5, 5], rtol=1e-12)
    np.testing.assert_allclose(amplification["closed_form"], [0, 5 / 6, 5 / 6, 5 / 6], rtol=1e-12)
