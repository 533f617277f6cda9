"""PR-DARTS' gated architecture (``pr_darts``): gate statistics, the top-k straight-through
mixing, the regularisers on hand-built cells, the derivation, and the IL chain's exact
hypergradient through the gates against central finite differences (float64)."""

from __future__ import annotations

import engine_fixtures
import numpy as np
import pytest
import tensorflow as tf
from engine_fixtures import make_batches, make_engine, randomise_momentum

from ilnas_tf import data, engine, genotype, hypergradient, pr_darts

A, B = -0.1, 1.1
FD_STEP = 1e-6


def numpy_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gated(steps=2, **kwargs):
    return pr_darts.GatedArchitecture(steps=steps, init_scale=0.5, dtype="float64", **kwargs)


def gated_engine(config, channels, **kwargs):
    """``make_engine`` with the gated architecture on 2-node per-edge cells."""
    return make_engine(
        config, channels=channels, nodes=2, architecture_class=pr_darts.GatedArchitecture,
        cell_impl="per_edge", **kwargs,
    )  # fmt: skip


# ------------------------------------------------------------------------------ the gates
def test_gate_samples_hit_zero_and_one_at_the_predicted_rates():
    # For g = clip(a + (b - a) sigmoid((alpha + L) / tau), 0, 1) with L logistic,
    # g = 0 iff L <= tau logit(-a / (b - a)) - alpha and g = 1 iff L >= tau logit((1 - a) /
    # (b - a)) - alpha; P(L >= x) = sigmoid(-x).
    n = 200_000
    uniform = np.random.default_rng(0).uniform(1e-9, 1 - 1e-9, size=n)
    for alpha, tau in [(0.0, 1.0), (1.5, 1.0), (-1.0, 0.5), (0.3, 0.1)]:
        gates = pr_darts.hard_concrete_gates(
            tf.constant(np.full(n, alpha)), tf.constant(uniform), tau, A, B
        ).numpy()
        assert gates.min() >= 0.0 and gates.max() <= 1.0
        logit = lambda c: np.log(c / (1 - c))  # noqa: E731
        p_zero = 1 - numpy_sigmoid(alpha - tau * logit(-A / (B - A)))
        p_one = numpy_sigmoid(alpha - tau * logit((1 - A) / (B - A)))
        for measured, expected in ((np.mean(gates == 0), p_zero), (np.mean(gates == 1), p_one)):
            assert abs(measured - expected) < 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9
        probability = pr_darts.activation_probability(
            tf.constant(alpha, tf.float64), tau, A, B
        ).numpy()
        np.testing.assert_allclose(probability, 1 - p_zero, rtol=1e-12)


def test_deterministic_gate_is_the_reference_formula():
    alpha = np.linspace(-3, 3, 13)
    for tau in (1.0, 0.3):
        expected = np.clip(numpy_sigmoid((alpha + 0.5) / tau) * (B - A) + A, 0, 1)
        actual = pr_darts.deterministic_gates(tf.constant(alpha), tau, A, B).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-14)


def test_top_k_mask_keeps_the_largest_breaks_ties_by_key_and_honours_dropout():
    gates = tf.constant([[0.1, 0.9, 0.5, 0.7], [1.0, 1.0, 1.0, 0.2], [0.0, 0.0, 0.0, 0.0]])
    key = tf.constant([[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.5, 0.0], [0.3, 0.2, 0.1, 0.0]])
    mask = pr_darts.top_k_mask(gates, 2, key).numpy()
    np.testing.assert_array_equal(mask, [[0, 1, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    drop = tf.constant([[False, True, False, False], [True, True, True, False], [False] * 4])
    mask = pr_darts.top_k_mask(gates, 2, key, drop).numpy()
    # Row 1: only one gate survives; the second pick is the first dropped one in key order.
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]])


def test_mixing_is_the_mask_and_its_gradient_the_gate_derivative_on_switched_on_ops():
    arch = gated()
    arch.resample(7)
    alphas = [tf.convert_to_tensor(p) for p in arch.parameters]
    rng = np.random.default_rng(1)
    cotangent = [tf.constant(rng.normal(size=a.shape)) for a in alphas]
    with tf.GradientTape() as tape:
        tape.watch(alphas)
        weights = arch.mixing(alphas)
        total = sum(tf.reduce_sum(c * w) for c, w in zip(cotangent, weights))
    grads = tape.gradient(total, alphas)
    noise, tau = arch.noise.numpy(), float(arch.tau.numpy())
    for cell, (alpha, w, g, c) in enumerate(zip(alphas, weights, grads, cotangent)):
        w = w.numpy()
        assert set(np.unique(w)) <= {0.0, 1.0}
        np.testing.assert_array_equal(w.sum(axis=-1), 2.0)  # top_k = 2 on every edge
        u = noise[cell, 0]
        s = numpy_sigmoid((alpha.numpy() + np.log(u) - np.log1p(-u)) / tau)
        stretched = s * (B - A) + A
        inside = (stretched > 0) & (stretched < 1)
        derivative = np.where(inside, (B - A) * s * (1 - s) / tau, 0.0)
        np.testing.assert_allclose(g.numpy(), w * c.numpy() * derivative, rtol=1e-10, atol=1e-15)
        assert np.count_nonzero(g.numpy()) > 0


def test_resample_is_a_function_of_seed_and_step():
    first, second = gated(seed=3), gated(seed=3)
    first.resample(5)
    second.resample(5)
    np.testing.assert_array_equal(first.noise.numpy(), second.noise.numpy())
    values = first.noise.numpy()
    assert values.min() > 0 and values.max() < 1
    first.resample(6)
    assert np.mean(first.noise.numpy() == values) < 0.01
    other = gated(seed=4)
    other.resample(5)
    assert np.mean(other.noise.numpy() == values) < 0.01


def test_next_sample_counts_draws_and_tau_anneals_linearly():
    arch = gated(seed=2, tau=1.0, tau_min=0.1)
    arch.next_sample()
    first = arch.noise.numpy().copy()
    arch.next_sample()
    assert int(arch.draws.numpy()) == 2
    reference = gated(seed=2)
    reference.resample(1)  # the second draw is number 1
    np.testing.assert_array_equal(arch.noise.numpy(), reference.noise.numpy())
    assert np.any(first != arch.noise.numpy())
    for epoch, expected in ((0, 1.0), (5, 0.55), (10, 0.1)):
        arch.start_epoch(epoch, 11)
        assert float(arch.tau.numpy()) == pytest.approx(expected, rel=1e-12)


def test_a_restored_checkpoint_continues_the_gate_samples(tmp_path):
    arch = gated(seed=5)
    for _ in range(3):
        arch.next_sample()
    path = tf.train.Checkpoint(architecture=arch).save(str(tmp_path / "ckpt"))
    arch.next_sample()
    uninterrupted = arch.noise.numpy().copy()
    resumed = gated(seed=5)
    tf.train.Checkpoint(architecture=resumed).restore(path).assert_consumed()
    assert int(resumed.draws.numpy()) == 3
    resumed.next_sample()
    np.testing.assert_array_equal(resumed.noise.numpy(), uninterrupted)


def test_evaluation_mixing_is_the_top_k_of_the_deterministic_gates():
    arch = gated(tau=0.5)
    rng = np.random.default_rng(4)
    for alpha in arch.alphas:
        alpha.assign(rng.normal(size=alpha.shape))
    weights = arch.evaluation_mixing(arch.parameters)
    for alpha, w in zip(arch.alphas, weights):
        gates = np.clip(numpy_sigmoid((alpha.numpy() + 0.5) / 0.5) * (B - A) + A, 0, 1)
        expected = np.zeros_like(gates)
        for e, row in enumerate(gates):
            expected[e, np.argsort(-row, kind="stable")[:2]] = 1.0
        np.testing.assert_array_equal(w.numpy(), expected)


# ------------------------------------------------------------------------ the regularisers
PRIMITIVES = genotype.PRIMITIVES  # none, max, avg, skip, sep3, sep5, dil3, dil5


def hand_regularizers(probabilities, masks, steps, threshold):
    """The module docstring's terms with explicit loops over edges and op names."""
    chain, start = [], 0
    for node in range(steps):
        chain.append(start + node + 1)  # node's edge from its predecessor state
        start += 2 + node
    groups = {
        "skip": {"skip_connect"},
        "pooling": {"max_pool_3x3", "avg_pool_3x3"},
        "non_skip": {"none", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"},
    }
    params = {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}
    terms = {}
    for name, members in groups.items():
        value = 0.0
        for p, m in zip(probabilities, masks):
            cells = [
                p[e][j] for e in range(len(p)) for j, op in enumerate(PRIMITIVES)
                if op in members and m[e][j]
            ]  # fmt: skip
            value += 0.5 * (sum(cells) / len(cells) if cells else 0.0)
        terms[name] = max(value - threshold, 0.0)
    path = 0.0
    for p, m in zip(probabilities, masks):
        means = []
        for e in chain:
            on = [p[e][j] for j, op in enumerate(PRIMITIVES) if op in params and m[e][j]]
            if on:
                means.append(sum(on) / len(on))
        path += 0.5 * (float(np.prod(means)) if means else 0.0)
    terms["path"] = path
    return terms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regularizers_match_a_hand_computation(seed):
    arch = gated(seed=seed, gate_dropout=0.0, tau=0.7)
    arch.resample(seed)
    rng = np.random.default_rng(seed)
    for alpha in arch.alphas:
        alpha.assign(rng.normal(size=alpha.shape))
    parameters = [tf.convert_to_tensor(p) for p in arch.parameters]
    masks = [w.numpy() for w in arch.mixing(parameters)]
    probabilities = [
        numpy_sigmoid(a.numpy() - 0.7 * np.log(-A / B)) for a in parameters
    ]  # the activation probabilities, written out
    expected = hand_regularizers(probabilities, masks, 2, 0.2)
    actual = {k: float(v) for k, v in arch.regularizer_terms(parameters).items()}
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-15), name
    lambda_1, lambda_2, lambda_3 = arch.regularization
    total = float(arch.objective_terms(parameters))
    assert total == pytest.approx(
        lambda_1 * expected["skip"]
        + lambda_2 * (expected["non_skip"] + expected["pooling"])
        - lambda_3 * expected["path"],
        rel=1e-12,
    )


def test_path_term_is_zero_without_parameterised_ops_and_a_product_otherwise():
    probabilities = [np.full((5, 8), 0.5), np.full((5, 8), 0.5)]
    masks = [np.zeros((5, 8)), np.zeros((5, 8))]
    for m in masks:
        m[:, 3] = m[:, 0] = 1  # skip + none everywhere: no parameterised op on the path
    groups = gated().groups
    terms = pr_darts.regularizers(
        [tf.constant(p) for p in probabilities], [tf.constant(m) for m in masks], groups, 2
    )
    assert float(terms["path"]) == 0.0
    assert float(terms["skip"]) == pytest.approx(0.5 - 0.2)  # 0.5 * 0.5 per cell, hinged
    masks[0][1, 4] = 1  # sep_conv_3x3 on input 1 -> node 0 (edge 1)
    masks[0][4, 6] = masks[0][4, 7] = 1  # two dil convs on node 0 -> node 1 (edge 4)
    probabilities[0][1, 4], probabilities[0][4, 6], probabilities[0][4, 7] = 0.8, 0.2, 0.6
    terms = pr_darts.regularizers(
        [tf.constant(p) for p in probabilities], [tf.constant(m) for m in masks], groups, 2
    )
    assert float(terms["path"]) == pytest.approx(0.5 * 0.8 * 0.4)


def test_derivation_ranks_edges_by_activation_probability():
    arch = gated()
    alpha = np.full((5, 8), -4.0)
    alpha[0, 4] = alpha[1, 4] = 1.0  # node 0: both its edges are kept anyway
    # Node 1 (edges 2, 3, 4 from input 0, input 1, node 0): edge 2 has the largest gates (2.0,
    # on two ops), edges 3 and 4 one smaller gate each (1.5, 1.0). PR-DARTS keeps edges 2 and
    # 3; DARTS' softmax halves edge 2's weight between its two ops and keeps edges 3 and 4.
    alpha[2, 5] = alpha[2, 6] = 2.0
    alpha[3, 7] = 1.5
    alpha[4, 1] = 1.0
    arch.alpha_normal.assign(alpha)
    arch.alpha_reduce.assign(alpha)
    result = arch.genotype()
    assert list(result.normal[2:]) == [("sep_conv_5x5", 0), ("dil_conv_5x5", 1)]
    assert result.reduce == result.normal
    darts = genotype.derive_genotype(alpha, alpha, steps=2, multiplier=2)
    assert list(darts.normal[2:]) == [("dil_conv_5x5", 1), ("max_pool_3x3", 2)]


def test_config_round_trip_and_invalid_arguments():
    arch = gated(tau=0.5, top_k=3, regularization=(0.1, 0.2, 0.3), seed=9)
    clone = pr_darts.GatedArchitecture.from_config(arch.get_config())
    assert (clone.top_k, clone.regularization, clone.seed) == (3, (0.1, 0.2, 0.3), 9)
    assert float(clone.tau.numpy()) == 0.5
    for kwargs, message in [
        ({"limit_a": 0.1}, "limit_a=0.1"),
        ({"limit_b": 1.0}, "limit_b=1.0"),
        ({"top_k": 9}, "top_k=9"),
        ({"tau": 0.0}, "tau=0.0"),
        ({"regularization": (1.0, 2.0)}, "regularization"),
        ({"gate_dropout": 1.0}, "gate_dropout=1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            gated(**kwargs)


# ------------------------------------------------------------------- the IL chain, exact
@pytest.fixture
def small_images(monkeypatch):
    monkeypatch.setattr(engine_fixtures, "IMAGE_SHAPE", (8, 8, 3))


def surrogate_objective(eng, alphas, origin, train, val, lr):
    """J(A) with the straight-through mixing written as a function: the supernet weighs each
    switched-on op by ``1 + g(A) - g(A0)`` (value 1 at A0, derivative the gate's), plus the
    regularisers; its gradient at A0 is what the straight-through chain computes."""
    arch = eng.architecture
    masks = [arch._sample(a, cell)[1] for cell, a in enumerate(origin)]
    noise, tau = tf.convert_to_tensor(arch.noise), tf.convert_to_tensor(arch.tau)

    def gate(a, cell):
        return pr_darts.hard_concrete_gates(a, noise[cell, 0], tau, A, B)

    def mixing(parameters):
        return tuple(
            m * (1.0 + gate(p, c) - gate(o, c))
            for c, (m, p, o) in enumerate(zip(masks, parameters, origin))
        )

    problem = eng.problem(train, val, lr)._replace(mixing=mixing)
    chain = hypergradient.unrolled_chain(problem, alphas)
    finals = [chain[eng.config.last_stage(k)] for k in range(eng.config.num_learners)]
    total, _, _ = hypergradient.validation_objective(problem, alphas, finals)
    return total + arch.objective_terms(alphas)


def test_il_chain_hypergradient_through_the_gates_matches_finite_differences(small_images):
    # Stage-wise exact (the default); the nested-tapes method reads the same mixing function
    # (measured equal to the same 1e-5 once, 2026-12-03; left out of the suite for time).
    config = engine.InterleavingConfig(num_learners=2, rounds=2, proximal_strength=0.7)
    eng = gated_engine(config, 4)
    eng.architecture.resample(11)
    randomise_momentum(eng)
    train, val = make_batches(eng, batch=4, seed=2)
    lr = 0.005
    grads, _, _ = eng.arch_gradient(train, val, lr)
    origin = [tf.convert_to_tensor(p) for p in eng.architecture.parameters]
    direction = [tf.constant(np.random.default_rng(0).normal(size=p.shape)) for p in origin]
    plus, minus = (
        surrogate_objective(
            eng, [p + s * FD_STEP * d for p, d in zip(origin, direction)], origin, train, val, lr
        )
        for s in (1.0, -1.0)
    )
    numeric = float(plus - minus) / (2 * FD_STEP)
    analytic = float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction)))
    assert abs(numeric) > 1e-6
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)


def test_finite_difference_mode_sees_one_sample_and_equals_exact_for_a_tiny_stencil(
    small_images,
):
    # Both sides of the difference read the same gate sample: with eps -> 0 the mode is the
    # exact hypergradient (a sample drawn per evaluation would change the mask between them).
    grads = {}
    for mode in ("exact", "finite_difference"):
        config = engine.InterleavingConfig(num_learners=1, rounds=1, mode=mode, fd_scale=1e-8)
        eng = gated_engine(config, 4, classes=(3,))
        eng.architecture.resample(4)
        randomise_momentum(eng)
        train, val = make_batches(eng, batch=4)
        grads[mode] = np.concatenate(
            [g.numpy().ravel() for g in eng.arch_gradient(train, val, 0.005)[0]]
        )
    exact, approx = grads["exact"], grads["finite_difference"]
    cosine = exact @ approx / (np.linalg.norm(exact) * np.linalg.norm(approx))
    assert cosine > 1 - 1e-9, cosine


def _skip_probabilities_after_steps(regularization, data_dir, steps=20):
    """Mean skip-connect activation probability per cell before/after first-order steps on
    the embedded data (``ilnas_synthetic/fine`` at 8x8, batches of 8)."""
    config = engine.InterleavingConfig(num_learners=1, mode="first_order", arch_learning_rate=0.1)
    eng = gated_engine(config, 2, classes=(10,))
    arch = eng.architecture
    arch.regularization = regularization
    skip = genotype.PRIMITIVES.index("skip_connect")
    before = np.array([p.numpy()[:, skip].mean() for p in arch.probabilities(arch.alphas)])
    streams = data.search_datasets("ilnas_synthetic/fine", 8, data_dir=data_dir, image_size=8)
    batches = zip(iter(streams.train), iter(streams.val))
    for step in range(steps):
        (train_x, train_y), (val_x, val_y) = next(batches)
        train = [(tf.cast(train_x, tf.float64), train_y)]
        val = [(tf.cast(val_x, tf.float64), val_y)]
        arch.resample(step)
        grads, _, _ = eng.arch_gradient(train, val, 0.01)
        eng.apply_arch_gradient(grads)
    return before, np.array([p.numpy()[:, skip].mean() for p in arch.probabilities(arch.alphas)])


def test_a_large_skip_penalty_lowers_the_skip_probabilities(small_images, data_dir):
    # Only the skip gates a sample switches on are penalised (the reference's mask), about a
    # quarter per step at top-2 of 8 ops; 20 steps with lambda_1 = 10 against none at all.
    before, penalised = _skip_probabilities_after_steps((10.0, 0.0, 0.0), data_dir)
    _, free = _skip_probabilities_after_steps((0.0, 0.0, 0.0), data_dir)
    assert np.all(penalised < before - 0.02), (before, penalised)
    assert np.all(penalised < free - 0.02), (free, penalised)


@pytest.mark.parametrize(
    "binding, message",
    [
        ("run_search.progressive = True", "run_search.progressive=True is invalid: expected False"),
        ("run_search.edge_normalization = True", "run_search.edge_normalization=True"),
    ],
)
def test_the_search_refuses_gates_with_what_they_do_not_support(binding, message, tmp_path):
    from search_fixtures import run_in_process

    with pytest.raises(ValueError, match=message):
        run_in_process(
            ["gin/demo.gin", "gin/smoke.gin"], ["run_search.gates = True", binding], tmp_path
        )
