"""Numerical tests of the interleaving hypergradient engine (float64, tiny supernets).

Finite differences of the unrolled objective need care: W̄ contains ∇_W L, which jumps when a
ReLU or a max-pool argmax flips, so the objective is only piecewise smooth in A. The checks use
a small step (1e-7, float64) and a well-conditioned problem (16x16 images, batch 4, small
learning rate) so that no flip happens inside the stencil.
"""

from __future__ import annotations

import engine_fixtures
import numpy as np
import pytest
import tensorflow as tf
from engine_fixtures import make_batches, make_engine, randomise_momentum, unrolled_objective

from ilnas_tf import engine, hypergradient

FD_STEP = 1e-7


@pytest.fixture(autouse=True)
def _images_16(monkeypatch):
    monkeypatch.setattr(engine_fixtures, "IMAGE_SHAPE", (16, 16, 3))


def _directional(grads, direction):
    return float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction) if g is not None))


def _alphas(eng):
    return [tf.convert_to_tensor(a) for a in eng.architecture.alphas]


@pytest.mark.parametrize("transfer", ["proximal", "handover"])
def test_exact_hypergradient_matches_finite_differences_of_the_chain(transfer):
    config = engine.InterleavingConfig(
        num_learners=2, rounds=2, proximal_strength=0.7, transfer=transfer, mode="exact"
    )
    eng = make_engine(config)
    randomise_momentum(eng)
    # Batches whose stencil crosses no ReLU / max-pool switch at the default chain's start
    # points (with seed 1 the handover chain, which now starts from the carried encoder,
    # crosses one: a jump of ~8 in the difference quotient).
    train, val = make_batches(eng, batch=4, seed=2)
    lr = 0.005
    grads, _, _ = eng.arch_gradient(train, val, lr)
    alphas = _alphas(eng)
    rng = np.random.default_rng(0)
    for _ in range(2):
        direction = [tf.constant(rng.normal(size=a.shape)) for a in alphas]
        plus = unrolled_objective(
            eng, [a + FD_STEP * d for a, d in zip(alphas, direction)], train, val, lr
        )
        minus = unrolled_objective(
            eng, [a - FD_STEP * d for a, d in zip(alphas, direction)], train, val, lr
        )
        numeric = float(plus - minus) / (2 * FD_STEP)
        analytic = _directional(grads, direction)
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric), (analytic, numeric)


def test_chain_depends_on_previous_stage_only_through_lambda():
    """With lambda = 0 (proximal) learner 2's W̄ does not depend on learner 1's weights."""
    config = engine.InterleavingConfig(num_learners=2, rounds=1, proximal_strength=0.0)
    eng = make_engine(config)
    train, _ = make_batches(eng, batch=2)
    w1 = eng.learners[0].states[0].encoder_weights
    with tf.GradientTape() as tape:
        chain = hypergradient.unrolled_chain(eng.problem(train, [], 0.01), _alphas(eng))
    assert tape.gradient(chain[1][0], w1) is None
    coupled = make_engine(
        engine.InterleavingConfig(num_learners=2, rounds=1, proximal_strength=0.5)
    )
    with tf.GradientTape() as tape:
        chain = hypergradient.unrolled_chain(coupled.problem(train, [], 0.01), _alphas(coupled))
    grad = tape.gradient(chain[1][0], coupled.learners[0].states[0].encoder_weights)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


def _fd_vs_exact_cosine(batch, **config):
    grads = {}
    for mode in ("exact", "finite_difference"):
        eng = make_engine(engine.InterleavingConfig(mode=mode, **config), classes=(3,))
        randomise_momentum(eng)
        train, val = make_batches(eng, batch=batch)
        grads[mode], _, _ = eng.arch_gradient(train, val, 0.005)
    exact = np.concatenate([g.numpy().ravel() for g in grads["exact"]])
    approx = np.concatenate([g.numpy().ravel() for g in grads["finite_difference"]])
    return exact @ approx / (np.linalg.norm(exact) * np.linalg.norm(approx))


def test_finite_difference_mode_is_exact_for_a_tiny_stencil():
    """With eps -> 0 (no ReLU/max-pool switch inside the stencil) FD mode equals exact."""
    assert _fd_vs_exact_cosine(batch=4, fd_scale=1e-8) > 1 - 1e-9


def test_finite_difference_mode_agrees_with_exact_at_the_darts_epsilon():
    """At eps = 0.01/||v|| the stencil crosses ReLU switches, where ∇_A L jumps; the error
    does not vanish as eps shrinks (measured cosines 0.977-0.991 on 4- and 16-image batches),
    and averages out with more units: > 0.99 on a 16-image batch."""
    assert _fd_vs_exact_cosine(batch=16) > 0.99


def test_mtl_configuration_is_the_sum_of_independent_darts_problems():
    """M=1, lambda=0: no cross-learner gradient; the hypergradient is a weighted sum."""
    weights = (1.0, 0.5)
    mtl = make_engine(
        engine.InterleavingConfig(num_learners=2, rounds=1, val_loss_weights=weights, mode="exact"),
        nodes=2,
    )
    train, val = make_batches(mtl, batch=2)
    total, _, _ = mtl.arch_gradient(train, val, 0.01)
    expected = [tf.zeros_like(g) for g in total]
    for k in range(2):
        single = engine.InterleavingEngine(
            mtl.architecture,
            [mtl.learners[k]],
            engine.InterleavingConfig(val_loss_weights=(weights[k],), mode="exact"),
            shared_stage_functions=False,
        )
        part, _, _ = single.arch_gradient([train[k]], [val[k]], 0.01)
        expected = [e + p for e, p in zip(expected, part)]
    for got, want in zip(total, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-13)


def _reference_sgd(weights, buffer, grad, lr, momentum, weight_decay, clip_norm, total_norm):
    """PyTorch: clip_grad_norm_ (coefficient clip / (norm + 1e-6), at most 1), then SGD."""
    grad = grad * min(1.0, clip_norm / (total_norm + 1e-6))
    buffer = momentum * buffer + grad + weight_decay * weights
    return weights - lr * buffer, buffer


def test_weight_step_is_pytorch_sgd_with_clipping_and_proximal_term():
    """The paper's literal step: the proximal gradient inside the clipped gradient."""
    config = engine.InterleavingConfig(
        num_learners=2, rounds=1, proximal_strength=0.3, grad_clip=0.05, proximal_step="gradient"
    )
    eng = make_engine(config)
    randomise_momentum(eng)
    train, _ = make_batches(eng, batch=2)
    lr = 0.05
    states = [item.states[0] for item in eng.learners]
    before = [
        [
            s.encoder_weights.numpy(),
            s.head_weights.numpy(),
            s.encoder_momentum.numpy(),
            s.head_momentum.numpy(),
        ]
        for s in states
    ]
    alphas = _alphas(eng)
    mixing = eng.architecture.mixing(alphas)
    # Learner 0 (first stage): plain loss. Its update defines W_prev for learner 1.
    expected = []
    previous = None
    for k in range(2):
        enc, head, enc_buf, head_buf = (tf.constant(v) for v in before[k])
        with tf.GradientTape() as tape:
            tape.watch([enc, head])
            loss, _ = eng.learners[k].loss(enc, head, mixing, *train[k])
            if previous is not None:
                loss += 0.3 * tf.reduce_sum(tf.square(enc - previous))
        g_enc, g_head = (g.numpy() for g in tape.gradient(loss, [enc, head]))
        norm = np.sqrt(np.sum(g_enc**2) + np.sum(g_head**2))
        new_enc, _ = _reference_sgd(before[k][0], before[k][2], g_enc, lr, 0.9, 3e-4, 0.05, norm)
        new_head, _ = _reference_sgd(before[k][1], before[k][3], g_head, lr, 0.9, 3e-4, 0.05, norm)
        expected.append((new_enc, new_head))
        previous = tf.constant(new_enc)
    eng.weight_step(train, lr)
    for state, (enc, head) in zip(states, expected):
        # eta is carried in float64 (a float32-rounded 0.05 would be off by ~1e-9 relative):
        # the step equals the reference to float64 round-off (measured <= 1.2e-16).
        np.testing.assert_allclose(state.encoder_weights.numpy(), enc, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state.head_weights.numpy(), head, rtol=1e-12, atol=1e-14)


def test_handover_copies_previous_encoder_before_the_step():
    config = engine.InterleavingConfig(num_learners=2, rounds=1, transfer="handover")
    eng = make_engine(config)
    train, _ = make_batches(eng, batch=2)
    eng.weight_step(train, 0.0)  # lr 0: learner 1 ends with exactly learner 0's weights
    np.testing.assert_array_equal(
        eng.learners[1].states[0].encoder_weights.numpy(),
        eng.learners[0].states[0].encoder_weights.numpy(),
    )


def test_weights_per_stage_uses_one_copy_per_round():
    config = engine.InterleavingConfig(num_learners=2, rounds=2, weights_per_stage=True)
    eng = make_engine(config)
    assert [len(item.states) for item in eng.learners] == [2, 2]
    assert [config.state_index(s) for s in range(4)] == [0, 0, 1, 1]
    assert config.stages == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [config.last_stage(k) for k in range(2)] == [2, 3]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_learners": 0}, "num_learners=0"),
        ({"rounds": 0}, "rounds=0"),
        ({"proximal_strength": -1.0}, "proximal_strength=-1.0"),
        ({"mode": "second_order"}, "mode='second_order'"),
        ({"transfer": "copy"}, "transfer='copy'"),
        ({"unroll_steps": 2, "mode": "first_order"}, "unroll_steps=2"),
        ({"num_learners": 2, "interleave_order": (0, 0)}, "interleave_order=(0, 0)"),
        ({"num_learners": 2, "val_loss_weights": (1.0,)}, "val_loss_weights=(1.0,)"),
        ({"grad_clip": 0.0}, "grad_clip=0.0"),
    ],
)
def test_bad_configuration_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=None) as info:
        engine.InterleavingConfig(**kwargs)
    assert needle in str(info.value)


def test_mismatched_image_shapes_are_rejected():
    from ilnas_tf import learner, search_space

    learners = [
        learner.Learner(search_space.SearchEncoder(2, 1), search_space.ClassifierHead(2), shape)
        for shape in ((8, 8, 3), (16, 16, 3))
    ]
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(16, 16, 3\)"):
        engine.InterleavingEngine(
            search_space.Architecture(), learners, engine.InterleavingConfig(num_learners=2)
        )


def test_step_rejects_batches_of_the_wrong_shape():
    eng = make_engine(engine.InterleavingConfig(mode="first_order"), classes=(3,))
    train, val = make_batches(eng, batch=2)
    bad = [(tf.zeros((2, 8, 8, 3), tf.float64), train[0][1])]
    with pytest.raises(ValueError, match=r"\(8, 8, 3\), expected \(16, 16, 3\)"):
        eng.step(bad, val, 0.01)
    with pytest.raises(ValueError, match="expected one per stage"):
        eng.step(train + train, val, 0.01)


def _darts_reference_steps(arch, encoder, head, batches, lr, steps):
    """Independent 2nd-order DARTS (quark0/darts HEAD semantics) on per-variable lists."""
    variables = encoder.trainable_variables + head.trainable_variables
    split = len(encoder.trainable_variables)
    weights = [tf.convert_to_tensor(v) for v in variables]
    buffers = [tf.zeros_like(w) for w in weights]
    adam_m = [np.zeros(a.shape) for a in arch.alphas]
    adam_v = [np.zeros(a.shape) for a in arch.alphas]

    def loss(ws, alphas, images, labels):
        mixing = arch.mixing(alphas)
        features, _ = encoder.stateless_call(ws[:split], [], images, *mixing)
        logits, _ = head.stateless_call(ws[split:], [], features)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    for step in range(steps):
        (x_train, y_train), (x_val, y_val) = batches[step]
        alphas = [tf.convert_to_tensor(a) for a in arch.alphas]
        with tf.GradientTape() as outer:
            outer.watch(alphas)
            with tf.GradientTape() as inner:
                inner.watch(weights)
                train_loss = loss(weights, alphas, x_train, y_train)
            grads = inner.gradient(train_loss, weights)
            unrolled = [
                w - lr * (0.9 * b + g + 3e-4 * w) for w, b, g in zip(weights, buffers, grads)
            ]
            val_loss = loss(unrolled, alphas, x_val, y_val)
        arch_grads = outer.gradient(val_loss, alphas)
        # torch.optim.Adam(lr 3e-4, betas (0.5, 0.999), eps 1e-8, weight_decay 1e-3).
        t = step + 1
        for i, (g, a) in enumerate(zip(arch_grads, arch.alphas)):
            p = a.numpy()
            g = g.numpy() + 1e-3 * p
            adam_m[i] = 0.5 * adam_m[i] + 0.5 * g
            adam_v[i] = 0.999 * adam_v[i] + 0.001 * g * g
            denom = np.sqrt(adam_v[i]) / np.sqrt(1 - 0.999**t) + 1e-8
            a.assign(p - 3e-4 / (1 - 0.5**t) * adam_m[i] / denom)
        alphas = [tf.convert_to_tensor(a) for a in arch.alphas]
        with tf.GradientTape() as tape:
            tape.watch(weights)
            train_loss = loss(weights, alphas, x_train, y_train)
        grads = tape.gradient(train_loss, weights)
        norm = float(tf.linalg.global_norm(grads))
        grads = [g * min(1.0, 5.0 / (norm + 1e-6)) for g in grads]  # clip_grad_norm_
        buffers = [0.9 * b + g + 3e-4 * w for w, b, g in zip(weights, buffers, grads)]
        weights = [w - lr * b for w, b in zip(weights, buffers)]
    return weights


def test_k1_m1_engine_reproduces_darts_second_order():
    from ilnas_tf import learner as learner_lib
    from ilnas_tf import search_space

    eng = make_engine(engine.InterleavingConfig(mode="exact"), classes=(3,))
    reference_arch = search_space.Architecture(init_scale=0.5, dtype="float64")
    for mine, theirs in zip(reference_arch.alphas, eng.architecture.alphas):
        mine.assign(theirs)
    batches = []
    for seed in (5, 6):
        train, val = make_batches(eng, batch=2, seed=seed)
        batches.append((train[0], val[0]))
    lr = 0.01
    learner = eng.learners[0]
    reference = _darts_reference_steps(
        reference_arch, learner.encoder, learner.head, batches, lr, steps=2
    )
    for train_batch, val_batch in batches:
        eng.step([train_batch], [val_batch], lr)
    for mine, theirs in zip(eng.architecture.alphas, reference_arch.alphas):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-8, atol=1e-10)
    flat = learner_lib.flatten(reference).numpy()
    state = learner.states[0]
    got = np.concatenate([state.encoder_weights.numpy(), state.head_weights.numpy()])
    # Same float64 roundoff bound as the weight-step test (~1e-10 absolute).
    np.testing.assert_allclose(got, flat, rtol=1e-7, atol=1e-9)
    assert not np.allclose(reference_arch.alpha_normal.numpy(), 0.0)


@pytest.mark.parametrize("transfer", ["proximal", "handover"])
def test_stagewise_exact_method_equals_nested_tapes(transfer):
    """Stage-wise reverse accumulation (both HVP methods) equals one nested tape around the
    whole chain, through T=2 virtual steps per stage and both transfer modes (K=2, M=1: the
    second stage starts from, or is pulled toward, the first stage's W̄)."""
    grads = {}
    for method, hvp, shared in [
        ("nested_tapes", "forward_over_reverse", False),
        ("stagewise", "forward_over_reverse", True),  # as traced functions (the default)
        ("stagewise", "reverse_over_reverse", False),
    ]:
        config = engine.InterleavingConfig(
            num_learners=2,
            rounds=1,
            proximal_strength=0.7,
            transfer=transfer,
            unroll_steps=2,
            exact_method=method,
            hvp_method=hvp,
        )
        eng = make_engine(config, shared_stage_functions=shared, nodes=2)
        randomise_momentum(eng)
        train, val = make_batches(eng, batch=2)
        result, _, _ = eng.arch_gradient(train, val, 0.01)
        grads[method, hvp] = np.concatenate([g.numpy().ravel() for g in result])
    reference = grads["nested_tapes", "forward_over_reverse"]
    assert np.linalg.norm(reference) > 0
    for key, value in grads.items():
        np.testing.assert_allclose(value, reference, rtol=1e-9, atol=1e-12, err_msg=str(key))
