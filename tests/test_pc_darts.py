"""PC-DARTS' edge normalisation (``pc_darts``): betas, mixing weights, derivation, hypergradient.

The partial channel connections themselves are tested in ``test_partial_channels.py`` (per-edge
cells) and ``test_fused_partial_channels.py`` (fused cells).
"""

from __future__ import annotations

import engine_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from engine_fixtures import make_batches, make_engine, randomise_momentum, unrolled_objective
from matplotlib import colormaps

from ilnas_tf import engine, genotype, pc_darts, search_space, summaries

FD_STEP = 1e-6


def numpy_softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def reference_beta_hat(beta, steps):
    """The reference's loop: softmax of betas[0:2], then of each next node's 3, 4, ... edges."""
    parts, start, n = [numpy_softmax(beta[0:2])], 2, 3
    for _ in range(steps - 1):
        parts.append(numpy_softmax(beta[start : start + n]))
        start, n = start + n, n + 1
    return np.concatenate(parts)


def test_parameters_init_and_mixing_weights():
    keras.utils.set_random_seed(0)
    arch = pc_darts.EdgeNormalizedArchitecture(dtype="float64")
    alpha_normal, alpha_reduce, beta_normal, beta_reduce = arch.parameters
    assert arch.alphas == [alpha_normal, alpha_reduce] and arch.betas == [beta_normal, beta_reduce]
    assert alpha_normal.shape == (14, 8) and beta_normal.shape == beta_reduce.shape == (14,)
    assert len(arch.trainable_weights) == 4
    for beta in arch.betas:  # 1e-3 * N(0, 1), two different draws
        assert 2e-4 < float(np.std(beta.numpy())) < 3e-3
    assert not np.array_equal(beta_normal.numpy(), beta_reduce.numpy())
    rng = np.random.default_rng(0)
    values = [rng.normal(size=p.shape) for p in arch.parameters]
    mixing = arch.mixing([tf.constant(v) for v in values])
    for cell in range(2):
        beta_hat = reference_beta_hat(values[2 + cell], 4)
        expected = numpy_softmax(values[cell]) * beta_hat[:, None]
        np.testing.assert_allclose(mixing[cell].numpy(), expected, rtol=1e-13)
        # The cells read each edge's weight back as its row sum.
        np.testing.assert_allclose(mixing[cell].numpy().sum(axis=1), beta_hat, rtol=1e-13)
        for start, end in pc_darts.node_edge_ranges(4):
            assert abs(beta_hat[start:end].sum() - 1.0) < 1e-13
    arch.beta_normal.assign(values[2])
    np.testing.assert_allclose(arch.edge_weights()[0], reference_beta_hat(values[2], 4), 1e-13)
    assert search_space.Architecture().edge_weights() is None


def test_config_round_trip_keeps_the_class():
    arch = pc_darts.EdgeNormalizedArchitecture(steps=2, primitives=("none", "skip_connect"))
    clone = keras.layers.deserialize(keras.layers.serialize(arch))
    assert isinstance(clone, pc_darts.EdgeNormalizedArchitecture)
    assert clone.steps == 2 and [p.shape for p in clone.parameters] == [
        p.shape for p in arch.parameters
    ]


def test_derivation_ranks_edges_by_alpha_times_beta():
    # steps=2: node 2 has edges 0-1 (inputs 0, 1), node 3 has edges 2-4 (inputs 0, 1, 2).
    primitives = ("none", "skip_connect", "sep_conv_3x3")
    arch = pc_darts.EdgeNormalizedArchitecture(steps=2, primitives=primitives, multiplier=2)
    alpha = np.zeros((5, 3))
    alpha[:, 1] = [2.0, 1.0, 2.0, 1.5, 1.0]  # skip_connect strongest on every edge
    alpha[4, 2] = 0.9  # edge 4 (input 2 -> node 3): sep_conv close behind
    beta = np.zeros(5)
    for variable in (arch.alpha_normal, arch.alpha_reduce):
        variable.assign(alpha)
    arch.beta_normal.assign(beta)
    arch.beta_reduce.assign(beta)
    # Uniform betas: the DARTS choice (node 3 keeps inputs 0 and 1).
    darts = (("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1))
    assert arch.genotype().normal == darts
    assert (
        genotype.derive_genotype(alpha, alpha, primitives=primitives, steps=2, multiplier=2).normal
        == darts
    )
    # A large beta on edge 4 makes input 2 one of node 3's two edges (alpha alone would not).
    beta_reduce = beta.copy()
    beta_reduce[4] = 3.0
    arch.beta_reduce.assign(beta_reduce)
    chosen = arch.genotype()
    assert chosen.normal == darts
    assert chosen.reduce == (
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("skip_connect", 2),
        ("skip_connect", 0),
    )
    # The op of a kept edge follows the alpha-softmax (beta scales a whole row).
    alpha[4, 2] = 2.5
    arch.alpha_reduce.assign(alpha)
    assert arch.genotype().reduce[2] == ("sep_conv_3x3", 2)


@pytest.fixture
def small_images(monkeypatch):
    monkeypatch.setattr(engine_fixtures, "IMAGE_SHAPE", (8, 8, 3))


@pytest.mark.parametrize("mode", ["exact", "exact_nested"])
def test_il_chain_hypergradient_wrt_alpha_and_beta_matches_finite_differences(mode, small_images):
    # IL K=2, M=2, lambda > 0, partial channels K=2 and edge normalisation, float64.
    config = engine.InterleavingConfig(
        num_learners=2,
        rounds=2,
        proximal_strength=0.7,
        mode="exact",
        exact_method="nested_tapes" if mode == "exact_nested" else "stagewise",
    )
    eng = make_engine(
        config,
        channels=4,
        nodes=2,
        architecture_class=pc_darts.EdgeNormalizedArchitecture,
        partial_channels=2,
        cell_impl="per_edge",
    )
    for beta in eng.architecture.betas:  # betas far from uniform, so they matter
        beta.assign(np.random.default_rng(5).normal(size=beta.shape))
    randomise_momentum(eng)
    train, val = make_batches(eng, batch=4, seed=2)
    lr = 0.005
    grads, _, _ = eng.arch_gradient(train, val, lr)
    assert len(grads) == 4 and all(g is not None for g in grads)
    parameters = [tf.convert_to_tensor(p) for p in eng.architecture.parameters]
    rng = np.random.default_rng(0)
    for which in ("alpha", "beta"):
        direction = [
            tf.constant(rng.normal(size=p.shape) * ((i >= 2) == (which == "beta")))
            for i, p in enumerate(parameters)
        ]
        plus, minus = (
            unrolled_objective(
                eng, [p + s * FD_STEP * d for p, d in zip(parameters, direction)], train, val, lr
            )
            for s in (1.0, -1.0)
        )
        numeric = float(plus - minus) / (2 * FD_STEP)
        analytic = float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction)))
        assert abs(numeric) > 1e-6, which
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (which, analytic, numeric)


def test_architecture_step_moves_the_betas(small_images):
    config = engine.InterleavingConfig(num_learners=1, mode="first_order")
    eng = make_engine(
        config,
        channels=4,
        nodes=2,
        architecture_class=pc_darts.EdgeNormalizedArchitecture,
        partial_channels=4,
        cell_impl="per_edge",
    )
    train, val = make_batches(eng)
    before = [b.numpy().copy() for b in eng.architecture.betas]
    grads, _, _ = eng.arch_gradient(train, val, 0.01)
    eng.apply_arch_gradient(grads)
    for old, new in zip(before, eng.architecture.betas):
        assert np.all(np.isfinite(new.numpy())) and np.any(new.numpy() != old)


def test_beta_summaries(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    rng = np.random.default_rng(0)
    alphas = [rng.normal(size=(5, 3)) for _ in range(2)]
    betas = [reference_beta_hat(rng.normal(size=5), 2) for _ in range(2)]
    with writer.as_default():
        summaries.write_alpha_summaries(3, *alphas, edge_weights=betas)
    writer.flush()
    events = summaries.read_events(str(tmp_path))
    inputs = np.array([2, 2, 3, 3, 3])  # nodes 2 and 3
    for cell, weights in zip(("normal", "reduce"), betas):
        # One labelled column: each edge's fill colour (sampled above its printed value) is
        # further up the diverging map the more its weight exceeds uniform (1 / inputs).
        image = events[f"betas/{cell}_heatmap"][0][1]
        reference, cells = summaries.heatmap_image(
            weights[:, None], op_names=["edge weight"], with_cells=True
        )
        assert image.shape == reference.shape and cells.shape[:2] == (5, 1)
        fills = [
            image[int(top + 0.25 * (bottom - top)), int((left + right) / 2)].astype(int)
            for top, left, bottom, right in cells[:, 0]
        ]
        lut = colormaps["RdBu_r"](np.linspace(0, 1, 256))[:, :3] * 255
        position = [np.argmin(np.abs(lut - fill).sum(axis=1)) for fill in fills]
        order = np.argsort(weights - 1 / inputs)
        assert np.all(np.diff(np.take(position, order)) > 0), (position, weights)
        step, weighted = events[f"alphas/{cell}_edge_weighted_heatmap"][0]
        assert step == 3 and weighted.shape == summaries.heatmap_image(alphas[0]).shape
        entropy = np.mean(
            [-np.sum(p * np.log(p)) for p in (weights[0:2], weights[2:5])]
        )  # nodes 2 and 3
        assert abs(events[f"betas/{cell}_entropy"][0][1] - entropy) < 1e-6
