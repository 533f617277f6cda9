"""Tests for ilnas_tf.search_space: architecture parameters, mixed ops, cells, encoder, heads,
parameter counts, and float64 finite-difference checks of first- and second-order (unrolled
DARTS) gradients through the supernet."""

import contextlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import ops
from ilnas_tf import search_space as ss
from ilnas_tf.genotype import PRIMITIVES, Genotype
from tests.layer_test_utils import count_params, run_layer_test

EPS = 1e-5


def rng_normal(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def np_softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_batch_norm(x):
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + EPS)


def random_mixing_weights(seed, edges=14, num_ops=8, dtype=np.float64):
    return tf.constant(np_softmax(rng_normal((edges, num_ops), seed)).astype(dtype))


def flat(tensors):
    return np.concatenate([np.asarray(t).ravel() for t in tensors])


@contextlib.contextmanager
def grappler_disabled():
    """Skips graph optimisation for a large throw-away tf.function (saves seconds)."""
    previous = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


# ----------------------------------------------------------------------------- Architecture


def test_architecture_shapes_and_init_scale():
    keras.utils.set_random_seed(0)
    arch = ss.Architecture()
    assert tuple(arch.alpha_normal.shape) == (14, len(PRIMITIVES)) == (14, 8)
    assert tuple(arch.alpha_reduce.shape) == (14, 8)
    assert arch.alphas == [arch.alpha_normal, arch.alpha_reduce]
    assert count_params(arch.trainable_weights) == 2 * 14 * 8
    values = flat([arch.alpha_normal.numpy(), arch.alpha_reduce.numpy()])
    assert 0.7e-3 < values.std() < 1.3e-3, values.std()
    assert abs(values.mean()) < 3e-4
    assert not np.allclose(arch.alpha_normal.numpy(), arch.alpha_reduce.numpy())

    small = ss.Architecture(primitives=("none", "skip_connect", "max_pool_3x3"), steps=3)
    assert tuple(small.alpha_normal.shape) == (2 + 3 + 4, 3)
    assert ss.num_edges(4) == 14 and ss.reduction_layers(8) == (2, 5)


def test_architecture_config_round_trip():
    arch = ss.Architecture(primitives=("none", "sep_conv_3x3"), steps=2, init_scale=0.5)
    config = arch.get_config()
    assert config["primitives"] == ["none", "sep_conv_3x3"]
    assert ss.Architecture.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(arch))
    assert type(revived) is ss.Architecture and revived.get_config() == config


def test_mixing_weights_are_a_softmax():
    keras.utils.set_random_seed(1)
    arch = ss.Architecture(init_scale=1.0)
    wn, wr = arch()
    for weights, alpha in ((wn, arch.alpha_normal), (wr, arch.alpha_reduce)):
        w = weights.numpy()
        assert w.shape == (14, 8)
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-6)
        assert np.all(w > 0)
        np.testing.assert_allclose(w, np_softmax(alpha.numpy().astype(np.float64)), rtol=1e-5)
    wn2, wr2 = arch.mixing(arch.parameters)
    np.testing.assert_array_equal(wn2.numpy(), wn.numpy())
    np.testing.assert_array_equal(wr2.numpy(), wr.numpy())
    assert arch.parameters == arch.alphas
    assert arch.objective_terms(arch.parameters) is None
    assert ss.SearchEncoder(2, 3).mixing_shape == (14, 8)


def test_genotype_follows_alphas():
    arch = ss.Architecture()
    alpha = np.zeros((14, 8), np.float32)
    alpha[:, PRIMITIVES.index("sep_conv_3x3")] = 5.0
    alpha[:, PRIMITIVES.index("none")] = 9.0  # 'none' never appears in a genotype
    arch.alpha_normal.assign(alpha)
    alpha = np.zeros((14, 8), np.float32)
    alpha[:, PRIMITIVES.index("max_pool_3x3")] = 5.0
    arch.alpha_reduce.assign(alpha)
    genotype = arch.genotype()
    assert isinstance(genotype, Genotype)
    assert [op for op, _ in genotype.normal] == ["sep_conv_3x3"] * 8
    assert [op for op, _ in genotype.reduce] == ["max_pool_3x3"] * 8


def test_architecture_rejects_bad_hparams():
    with pytest.raises(ValueError, match=r"primitives=.*conv_7x7.*is invalid"):
        ss.Architecture(primitives=("none", "conv_7x7"))
    with pytest.raises(ValueError, match=r"primitives=\('none', 'none'\) is invalid.*duplicates"):
        ss.Architecture(primitives=("none", "none"))
    with pytest.raises(ValueError, match="-1"):
        ss.Architecture(init_scale=-1.0)
    with pytest.raises(ValueError, match="steps"):
        ss.Architecture(steps=0)
    with pytest.raises(ValueError, match="3"):
        ss.MixedOp(4, 3)
    with pytest.raises(ValueError, match="multiplier"):
        ss.SearchCell(4, 4, 2, False, False, steps=2, multiplier=3)


# ----------------------------------------------------------------------------- MixedOp


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_weighted_sum_of_candidates(stride):
    x = tf.constant(rng_normal((2, 8, 8, 4), seed=stride))
    mixed = ss.MixedOp(4, stride, dtype="float64")
    weights = random_mixing_weights(stride)[0]
    out = mixed(x, weights).numpy()
    assert out.shape == (2, 8 // stride, 8 // stride, 4)
    assert [op.name for op in mixed.candidates] == [p for p in PRIMITIVES if p != "none"]

    expected = np.zeros_like(out)
    for op in mixed.candidates:
        y = op(x).numpy()
        if "pool" in op.name:
            y = np_batch_norm(y)  # pools are followed by a batch-statistics BN
        expected += weights.numpy()[PRIMITIVES.index(op.name)] * y
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)

    # 'none' contributes nothing: its weight does not matter, alone it gives zeros.
    changed = weights.numpy().copy()
    changed[PRIMITIVES.index("none")] = 123.0
    np.testing.assert_allclose(mixed(x, tf.constant(changed)).numpy(), out, rtol=1e-12)
    only_none = np.zeros(8)
    only_none[PRIMITIVES.index("none")] = 1.0
    assert np.all(mixed(x, tf.constant(only_none)).numpy() == 0.0)


def test_mixed_op_indexes_weights_by_primitive():
    x = tf.constant(rng_normal((2, 8, 8, 2), seed=3))
    mixed = ss.MixedOp(2, 1, primitives=("skip_connect", "none", "max_pool_3x3"), dtype="float64")
    out = mixed(x, tf.constant([0.25, 100.0, 0.5], tf.float64)).numpy()
    pooled = np_batch_norm(ops.max_pool_3x3(x, 1).numpy())
    np.testing.assert_allclose(out, 0.25 * x.numpy() + 0.5 * pooled, rtol=1e-10, atol=1e-10)


def test_mixed_op_layer():
    x = tf.constant(rng_normal((2, 8, 8, 2), seed=4, dtype=np.float32))
    run_layer_test(
        ss.MixedOp,
        dict(channels=2, stride=2, primitives=list(PRIMITIVES)),
        (x, random_mixing_weights(4, dtype=np.float32)[0]),
        (2, 4, 4, 2),
        # sep3 2*(9*2+4) + sep5 2*(25*2+4) + dil3 (18+4) + dil5 (50+4) + FR 4
        expected_num_trainable_params=44 + 108 + 22 + 54 + 4,
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- SearchCell


CELL_CASES = {
    # name: (reduction, reduction_prev, s0 spatial, s1 spatial, output spatial)
    "normal": (False, False, 8, 8, 8),
    "reduction": (True, False, 8, 8, 4),
    "normal_after_reduction": (False, True, 8, 4, 4),
    "reduction_after_reduction": (True, True, 8, 4, 2),
}


def make_cell(reduction, reduction_prev, s0_hw, s1_hw, dtype="float64", channels=2):
    cell = ss.SearchCell(6, 5, channels, reduction, reduction_prev, dtype=dtype)
    cell.build((2, s0_hw, s0_hw, 6), (2, s1_hw, s1_hw, 5))
    return cell


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_search_cell_output_shape(case):
    reduction, reduction_prev, h0, h1, h_out = CELL_CASES[case]
    cell = make_cell(reduction, reduction_prev, h0, h1, dtype="float32")
    assert isinstance(cell.preprocess0, ops.FactorizedReduce if reduction_prev else ops.ReLUConvBN)
    s0 = tf.constant(rng_normal((2, h0, h0, 6), seed=1, dtype=np.float32))
    s1 = tf.constant(rng_normal((2, h1, h1, 5), seed=2, dtype=np.float32))
    out = cell(s0, s1, random_mixing_weights(0, dtype=np.float32))
    assert tuple(out.shape) == (2, h_out, h_out, 4 * 2)
    assert np.all(np.isfinite(out.numpy()))
    strides = [edge.stride for edge in cell.edges]
    expected = [2 if reduction and e in (0, 1, 2, 3, 5, 6, 9, 10) else 1 for e in range(14)]
    # Edges from the two cell inputs (source 0/1 of every node) have stride 2 in reductions.
    assert strides == expected
    config = cell.get_config()
    assert ss.SearchCell.from_config(config).get_config() == config


def test_search_cell_builds_on_first_call():
    s0 = tf.zeros((2, 8, 8, 6))
    s1 = tf.zeros((2, 8, 8, 5))
    run_layer_test(
        ss.SearchCell,
        dict(c_prev_prev=6, c_prev=5, channels=2, reduction=True, reduction_prev=False),
        (s0, s1, random_mixing_weights(0, dtype=np.float32)),
        (2, 4, 4, 8),
    )


def test_reduction_cell_input_gradient_matches_finite_differences():
    cell = make_cell(True, False, 8, 8)
    s0 = tf.constant(rng_normal((2, 8, 8, 6), seed=5))
    s1 = tf.constant(rng_normal((2, 8, 8, 5), seed=6))
    weights = random_mixing_weights(7)
    probe = tf.constant(rng_normal((2, 4, 4, 8), seed=8))

    def loss(a, b, w):
        return tf.reduce_sum(cell(a, b, w) * probe)

    with tf.GradientTape() as tape:
        tape.watch([s0, s1, weights])
        value = loss(s0, s1, weights)
    g0, g1, gw = tape.gradient(value, [s0, s1, weights])

    h = 1e-6
    rng = np.random.default_rng(9)
    checks = []  # (analytic directional derivative, finite difference)
    for _ in range(2):
        d0, d1 = rng.standard_normal(s0.shape), rng.standard_normal(s1.shape)
        fd = loss(s0 + h * d0, s1 + h * d1, weights) - loss(s0 - h * d0, s1 - h * d1, weights)
        checks.append((np.sum(g0 * d0) + np.sum(g1 * d1), fd.numpy() / (2 * h)))
    dw = rng.standard_normal(weights.shape)
    fd = loss(s0, s1, weights + h * dw) - loss(s0, s1, weights - h * dw)
    checks.append((np.sum(gw * dw), fd.numpy() / (2 * h)))
    # Single entries (positive ones: the preprocessing ReLU zeroes the others' gradients).
    s0_entries = [i for i in np.ndindex(*s0.shape) if s0.numpy()[i] > 0.1]
    s1_entries = [i for i in np.ndindex(*s1.shape) if s1.numpy()[i] > 0.1]
    for index in [s0_entries[0], s0_entries[-1]] + [s0_entries[i] for i in (40, 90)]:
        e = np.zeros(s0.shape)
        e[index] = 1.0
        fd = loss(s0 + h * e, s1, weights) - loss(s0 - h * e, s1, weights)
        checks.append((g0.numpy()[index], fd.numpy() / (2 * h)))
    for index in [s1_entries[0], s1_entries[-1], s1_entries[77]]:
        e = np.zeros(s1.shape)
        e[index] = 1.0
        fd = loss(s0, s1 + h * e, weights) - loss(s0, s1 - h * e, weights)
        checks.append((g1.numpy()[index], fd.numpy() / (2 * h)))
    analytic, numeric = np.array(checks).T
    assert np.all(np.abs(analytic) > 1e-3), analytic  # non-trivial derivatives
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- Encoder / head


def test_encoder_layer():
    keras.utils.set_random_seed(2)
    images = tf.constant(rng_normal((2, 8, 8, 3), seed=10, dtype=np.float32))
    weights = random_mixing_weights(11, dtype=np.float32)
    encoder = run_layer_test(
        ss.SearchEncoder,
        dict(channels=2, layers=3),
        (images, weights, random_mixing_weights(12, dtype=np.float32)),
        (2, 32),
        rtol=1e-4,
        atol=1e-5,
    )
    assert encoder.output_channels == 32
    assert encoder.compute_output_shape((2, 8, 8, 3)) == (2, 32)
    assert [c.reduction for c in encoder.cells] == [False, True, True]
    assert [c.reduction_prev for c in encoder.cells] == [False, False, True]
    assert encoder.non_trainable_weights == []  # batch-statistics BNs keep no state
    with pytest.raises(ValueError, match="3 channels"):
        ss.SearchEncoder(2, 3)(tf.zeros((2, 8, 8, 1)), weights, weights)


def test_classifier_head_layer():
    features = tf.constant(rng_normal((2, 32), seed=13, dtype=np.float32))
    run_layer_test(
        ss.ClassifierHead,
        dict(num_classes=10),
        features,
        (2, 10),
        expected_num_trainable_params=32 * 10 + 10,
        rtol=1e-5,
    )


def op_params(op, c, stride):
    """Trainable parameters of one candidate op on a C-channel edge (non-affine BNs: none)."""
    return {
        "sep_conv_3x3": 2 * (9 * c + c * c),
        "sep_conv_5x5": 2 * (25 * c + c * c),
        "dil_conv_3x3": 9 * c + c * c,
        "dil_conv_5x5": 25 * c + c * c,
        "skip_connect": c * c if stride == 2 else 0,  # FactorizedReduce(C, C): two C/2 halves
    }.get(op, 0)  # none, pools


def derived_supernet_params(
    channels,
    layers,
    num_classes,
    steps=4,
    multiplier=4,
    stem=3,
    edge_primitives=None,
    partial_channels=1,
):
    """Trainable parameters of the reference DARTS supernet, from the layer rules.

    ``partial_channels`` K: PC-DARTS' candidate ops are built for ``C // K`` channels; the
    preprocessing, stem and classifier keep the full channels.
    """
    c_stem = stem * channels
    total = 3 * 3 * 3 * c_stem + 2 * c_stem  # stem conv (no bias) + affine BN
    c_pp, c_p, c = c_stem, c_stem, channels
    for index in range(layers):
        reduction = index in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        total += c_pp * c  # preprocess0: 1x1 ReLUConvBN or FactorizedReduce (two C/2 halves)
        total += c_p * c  # preprocess1: 1x1 ReLUConvBN; non-affine BNs have no parameters
        edge = 0
        for node in range(steps):
            for source in range(2 + node):
                stride = 2 if reduction and source < 2 else 1
                edge_ops = (
                    PRIMITIVES if edge_primitives is None else edge_primitives[reduction][edge]
                )
                total += sum(op_params(op, c // partial_channels, stride) for op in edge_ops)
                edge += 1
        c_pp, c_p = c_p, multiplier * c
    return total + c_p * num_classes + num_classes


def test_supernet_parameter_count():
    encoder = ss.SearchEncoder(16, 8)
    encoder.build((None, 32, 32, 3))
    head = ss.ClassifierHead(10)
    head.build((None, encoder.output_channels))
    arch = ss.Architecture()
    total = count_params(encoder.trainable_weights) + count_params(head.trainable_weights)
    assert total == derived_supernet_params(16, 8, 10)
    # quark0/darts train_search.py logs "param size = 1.930618MB" for this configuration.
    assert total == 1_930_618
    assert encoder.non_trainable_weights == []
    assert [c.reduction for c in encoder.cells] == [i in (2, 5) for i in range(8)]
    assert {id(v) for v in encoder.weights}.isdisjoint(id(v) for v in arch.weights)
    assert not any("alpha" in v.path for v in encoder.weights)


# ----------------------------------------------------------------------------- gradients


@pytest.fixture(scope="module")
def tiny_float64_problem():
    """A float64 C=2, 3-cell supernet (normal, reduction, reduction-after-reduction), a float64
    head, non-uniform alphas, and train/validation batches."""
    keras.utils.set_random_seed(3)
    encoder = ss.SearchEncoder(2, 3, dtype="float64")
    head = ss.ClassifierHead(3, dtype="float64")
    images = tf.constant(rng_normal((2, 8, 8, 3), seed=30))
    encoder.build(images.shape)
    head.build((None, encoder.output_channels))
    n_encoder = len(encoder.trainable_variables)
    architecture = ss.Architecture()
    weights = [
        tf.constant(v.numpy()) for v in encoder.trainable_variables + head.trainable_variables
    ]
    alphas = [tf.constant(0.5 * rng_normal((14, 8), seed=s)) for s in (31, 32)]
    train = (images, tf.constant([0, 2]))
    val = (tf.constant(rng_normal((2, 8, 8, 3), seed=33)), tf.constant([1, 0]))

    def loss(weights, alpha_normal, alpha_reduce, batch):
        images, labels = batch
        mixing = architecture.mixing([alpha_normal, alpha_reduce])
        features, _ = encoder.stateless_call(weights[:n_encoder], [], images, *mixing)
        logits, _ = head.stateless_call(weights[n_encoder:], [], features)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    last_cell = {id(v) for v in encoder.cells[-1].trainable_variables}
    in_last_cell_or_head = [id(v) in last_cell for v in encoder.trainable_variables] + [True] * len(
        head.trainable_variables
    )
    return dict(
        loss=loss,
        weights=weights,
        alphas=alphas,
        train=train,
        val=val,
        in_last_cell_or_head=in_last_cell_or_head,
    )


ETA = 0.01  # large enough that the second-order term is ~half of the alpha gradient


def test_unrolled_alpha_gradient_matches_finite_differences(tiny_float64_problem):
    p = tiny_float64_problem
    loss, weights, (an, ar) = p["loss"], p["weights"], p["alphas"]

    def unrolled_val_loss(alpha_normal, alpha_reduce):
        with tf.GradientTape() as inner:
            inner.watch(weights)
            train_loss = loss(weights, alpha_normal, alpha_reduce, p["train"])
        grads = inner.gradient(train_loss, weights)
        stepped = [w - ETA * g for w, g in zip(weights, grads)]
        return loss(stepped, alpha_normal, alpha_reduce, p["val"]), stepped

    # (a) d/dA L_val(W - eta * dL_train/dW(W, A), A) with nested tapes.
    with tf.GradientTape() as outer:
        outer.watch([an, ar])
        val_loss, stepped = unrolled_val_loss(an, ar)
    analytic = flat(outer.gradient(val_loss, [an, ar]))
    assert analytic.shape == (224,) and np.all(np.isfinite(analytic))

    # The first-order (W' held fixed) gradient differs a lot: the check sees the 2nd-order term.
    stepped_fixed = [tf.constant(w.numpy()) for w in stepped]
    with tf.GradientTape() as tape:
        tape.watch([an, ar])
        first_order_loss = loss(stepped_fixed, an, ar, p["val"])
    first_order = flat(tape.gradient(first_order_loss, [an, ar]))
    assert np.linalg.norm(analytic - first_order) > 0.2 * np.linalg.norm(analytic)

    # Central differences (the unrolled loss traced once: ~40 ms per evaluation instead of
    # ~1.4 s eagerly) along two random unit directions of the 224-d alpha space and along
    # single entries: the 8 largest-gradient ones, 'none' of the first edge of both cell
    # kinds, and 10 random ones.
    with grappler_disabled():
        evaluate = tf.function(lambda a, b: unrolled_val_loss(a, b)[0], autograph=False)
        evaluate(an, ar)
    h = 1e-6
    base = flat([an, ar])

    def directional_fd(direction):
        plus, minus = (tf.constant((base + s * h * direction).reshape(2, 14, 8)) for s in (1, -1))
        return (evaluate(plus[0], plus[1]) - evaluate(minus[0], minus[1])).numpy() / (2 * h)

    rng = np.random.default_rng(34)
    none = PRIMITIVES.index("none")
    entries = list(np.argsort(-np.abs(analytic))[:8]) + [none, 112 + none]
    entries += list(rng.choice(224, 10, replace=False))
    directions = [rng.standard_normal(224) for _ in range(2)] + list(np.eye(224)[entries])
    directions = [d / np.linalg.norm(d) for d in directions]
    numeric = np.array([directional_fd(d) for d in directions])
    expected = np.array([analytic @ d for d in directions])
    scale = np.abs(analytic).max()
    assert scale > 1e-2
    np.testing.assert_allclose(numeric, expected, rtol=1e-4, atol=1e-4 * scale)
    # Both cell kinds receive gradient.
    assert np.abs(analytic[:112]).max() > 1e-3 and np.abs(analytic[112:]).max() > 1e-3


def test_weight_gradient_at_stepped_weights_matches_finite_differences(tiny_float64_problem):
    p = tiny_float64_problem
    loss, weights, (an, ar) = p["loss"], p["weights"], p["alphas"]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        train_loss = loss(weights, an, ar, p["train"])
    grads = tape.gradient(train_loss, weights)
    stepped = [w - ETA * g for w, g in zip(weights, grads)]

    # (b) dL_val/dW at the perturbed weights W' = W - eta * dL_train/dW.
    with tf.GradientTape() as tape:
        tape.watch(stepped)
        val_loss = loss(stepped, an, ar, p["val"])
    grads = tape.gradient(val_loss, stepped)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)

    rng = np.random.default_rng(40)
    mask = p["in_last_cell_or_head"]  # direction 2 only moves the last cell and the head
    assert 0 < sum(mask) < len(mask)
    directions = [
        [rng.standard_normal(w.shape) for w in stepped],
        [rng.standard_normal(w.shape) * m for w, m in zip(stepped, mask)],
    ]
    h = 1e-6
    for direction in directions:
        norm = np.sqrt(sum(np.sum(d * d) for d in direction))
        direction = [d / norm for d in direction]
        plus = [w + h * d for w, d in zip(stepped, direction)]
        minus = [w - h * d for w, d in zip(stepped, direction)]
        numeric = (loss(plus, an, ar, p["val"]) - loss(minus, an, ar, p["val"])).numpy() / (2 * h)
        analytic = sum(np.sum(g.numpy() * d) for g, d in zip(grads, direction))
        assert abs(analytic) > 1e-3
        assert abs(analytic - numeric) < 1e-5 * abs(analytic), (analytic, numeric)


# ----------------------------------------------------------------------------- per-edge subsets


def random_edge_primitives(seed, n_ops=3, steps=4):
    """Random per-edge op subsets (random column order) for both cells."""
    rng = np.random.default_rng(seed)
    edges = ss.num_edges(steps)
    return tuple(
        tuple(
            tuple(str(p) for p in rng.choice(PRIMITIVES, n_ops, replace=False))
            for _ in range(edges)
        )
        for _ in range(2)
    )


def scatter_columns(weights, edge_ops, primitives=PRIMITIVES):
    """Subset mixing weights ``(edges, n_ops)`` as full ``(edges, len(primitives))`` ones."""
    weights = np.asarray(weights)
    full = np.zeros((len(edge_ops), len(primitives)), weights.dtype)
    for e, names in enumerate(edge_ops):
        for j, name in enumerate(names):
            full[e, primitives.index(name)] = weights[e, j]
    return full


def copy_subset_kernels(subset_cell, full_cell):
    """Copies a full per-edge SearchCell's kernels into a subset one, op by op and edge by edge."""
    for mine, theirs in ((subset_cell.preprocess0, full_cell.preprocess0),
                         (subset_cell.preprocess1, full_cell.preprocess1)):  # fmt: skip
        for k, v in zip(mine.kernels, theirs.kernels):
            k.assign(v)
    for mine, theirs in zip(subset_cell.edges, full_cell.edges):
        by_name = {op.name: op for op in theirs.candidates}
        for op in mine.candidates:
            for k, v in zip(op.kernels, by_name[op.name].kernels, strict=True):
                k.assign(v)


@pytest.mark.parametrize("case", ["normal", "reduction", "reduction_after_reduction"])
def test_subset_cell_equals_full_cell_with_scattered_weights(case):
    reduction, reduction_prev, h0, h1, _ = CELL_CASES[case]
    edge_ops = random_edge_primitives(50)[reduction]
    full = make_cell(reduction, reduction_prev, h0, h1)
    subset = ss.SearchCell(
        6, 5, 2, reduction, reduction_prev, edge_primitives=edge_ops, dtype="float64"
    )
    subset.build((2, h0, h0, 6), (2, h1, h1, 5))
    copy_subset_kernels(subset, full)
    assert [e.primitives for e in subset.edges] == list(edge_ops)
    s0 = tf.constant(rng_normal((2, h0, h0, 6), seed=51))
    s1 = tf.constant(rng_normal((2, h1, h1, 5), seed=52))
    weights = tf.constant(rng_normal((14, 3), seed=53))  # not normalised: every entry matters
    full_weights = tf.constant(scatter_columns(weights, edge_ops))
    probe = tf.constant(rng_normal(full(s0, s1, full_weights).shape, seed=54))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s0, s1, weights, full_weights])
        out = subset(s0, s1, weights)
        expected = full(s0, s1, full_weights)
        loss, full_loss = tf.reduce_sum(out * probe), tf.reduce_sum(expected * probe)
    assert np.abs(expected.numpy()).max() > 0.1
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-11, atol=1e-12)
    g0, g1, gw = tape.gradient(loss, [s0, s1, weights])
    f0, f1, fw = tape.gradient(full_loss, [s0, s1, full_weights])
    np.testing.assert_allclose(g0.numpy(), f0.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g1.numpy(), f1.numpy(), rtol=1e-10, atol=1e-12)
    # The subset weights' gradient is the full one's at the subset columns.
    expected_gw = [
        [fw.numpy()[e, PRIMITIVES.index(n)] for n in names] for e, names in enumerate(edge_ops)
    ]
    np.testing.assert_allclose(gw.numpy(), expected_gw, rtol=1e-10, atol=1e-12)
    # The full cell with another weight on an op outside the subsets differs: the test sees it.
    missing = [
        (e, PRIMITIVES.index(p))
        for e, n in enumerate(edge_ops)
        for p in PRIMITIVES[1:]
        if p not in n
    ]
    changed = full_weights.numpy().copy()
    changed[missing[0]] = 1.0
    assert np.abs(full(s0, s1, tf.constant(changed)).numpy() - expected.numpy()).max() > 1e-3


@pytest.mark.parametrize("cell_impl", ["per_edge", "fused"])
def test_subset_supernet_parameter_count(cell_impl):
    edge_primitives = random_edge_primitives(60)
    encoder = ss.SearchEncoder(4, 5, cell_impl=cell_impl, edge_primitives=edge_primitives)
    encoder.build((None, 16, 16, 3))
    head = ss.ClassifierHead(10)
    head.build((None, encoder.output_channels))
    total = count_params(encoder.trainable_weights) + count_params(head.trainable_weights)
    expected = derived_supernet_params(4, 5, 10, edge_primitives=edge_primitives)
    assert total == expected
    assert expected < derived_supernet_params(4, 5, 10)  # absent ops have no parameters
    assert encoder.mixing_shape == (14, 3)
    for cell in encoder.cells:
        assert cell.edge_primitives == edge_primitives[cell.reduction]


def test_subset_genotype_maps_columns_to_op_names():
    normal = tuple(("none", "max_pool_3x3", "sep_conv_3x3") if e % 2 else ("dil_conv_5x5", "none", "skip_connect") for e in range(14))  # fmt: skip
    reduce = tuple(("avg_pool_3x3", "sep_conv_5x5", "none") for _ in range(14))
    arch = ss.Architecture(edge_primitives=(normal, reduce))
    assert tuple(arch.alpha_normal.shape) == (14, 3) and arch.parameters == arch.alphas
    alpha = np.zeros((14, 3), np.float32)
    alpha[:, 0] = 9.0  # column 0: 'none' on odd edges (excluded), dil_conv_5x5 on even ones
    alpha[:, 2] = 5.0  # column 2: sep_conv_3x3 on odd edges, skip_connect on even ones
    arch.alpha_normal.assign(alpha)
    alpha = np.zeros((14, 3), np.float32)
    alpha[:, 2] = 9.0  # 'none' everywhere: excluded, so the second-best column wins
    alpha[:, 1] = 4.0
    arch.alpha_reduce.assign(alpha)
    genotype = arch.genotype()
    # Node 0 edges (0: even, 1: odd): edge 0's dil_conv_5x5 (softmax 0.98) beats edge 1's
    # sep_conv_3x3 (0.018); the ranked order is kept.
    assert genotype.normal[:2] == (("dil_conv_5x5", 0), ("sep_conv_3x3", 1))
    edges_of_node = [range(0, 2), range(2, 5), range(5, 9), range(9, 14)]
    for node, entries in enumerate(zip(genotype.normal[::2], genotype.normal[1::2])):
        for op, source in entries:
            edge = edges_of_node[node][source]
            assert op == ("sep_conv_3x3" if edge % 2 else "dil_conv_5x5")
    assert [op for op, _ in genotype.reduce] == ["sep_conv_5x5"] * 8


def test_subset_config_round_trips():
    edge_primitives = random_edge_primitives(70, n_ops=2, steps=2)
    arch = ss.Architecture(steps=2, edge_primitives=edge_primitives)
    config = arch.get_config()
    assert config["edge_primitives"] == [[list(s) for s in cell] for cell in edge_primitives]
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(arch)))
    )
    assert revived.get_config() == config and revived.edge_primitives == edge_primitives
    assert ss.Architecture.from_config(config).genotype() is not None
    images = tf.constant(rng_normal((2, 8, 8, 3), seed=71, dtype=np.float32))
    weights = tf.constant(np_softmax(rng_normal((5, 2), seed=72)).astype(np.float32))
    for cell_impl in ("per_edge", "fused"):
        encoder = run_layer_test(
            ss.SearchEncoder,
            dict(
                channels=2,
                layers=3,
                steps=2,
                multiplier=2,
                cell_impl=cell_impl,
                edge_primitives=[[list(s) for s in cell] for cell in edge_primitives],
            ),
            (images, weights, weights),
            (2, 16),
            rtol=1e-4,
            atol=1e-5,
        )
        assert encoder.edge_primitives == edge_primitives
        cell = encoder.cells[1]
        assert type(cell).from_config(cell.get_config()).get_config() == cell.get_config()


def test_bad_edge_primitives_are_rejected():
    good = random_edge_primitives(80)
    with pytest.raises(
        ValueError, match=r"edge_primitives\[0\]=.* is invalid: expected a list or tuple of 14"
    ):
        ss.Architecture(edge_primitives=(good[0][:13], good[1]))
    uneven = (good[0][:13] + (("none", "skip_connect"),), good[1])
    with pytest.raises(ValueError, match=r"edge_primitives\[0\]=.*same number of ops"):
        ss.SearchEncoder(2, 3, edge_primitives=uneven)
    with pytest.raises(
        ValueError, match=r"edge_primitives\[1\]\[0\]=\('none', 'none', 'none'\) is invalid"
    ):
        ss.Architecture(edge_primitives=(good[0], (("none",) * 3,) + good[1][1:]))
    with pytest.raises(ValueError, match=r"edge_primitives\[2\]=.*conv_7x7"):
        ss.SearchCell(
            4,
            4,
            2,
            False,
            False,
            edge_primitives=good[0][:2] + (("conv_7x7", "none", "skip_connect"),) + good[0][3:],
        )
    with pytest.raises(ValueError, match=r"edge_primitives\[0\]\[0\]=.*only 'none'"):
        ss.SearchEncoder(2, 3, edge_primitives=((("none",),) * 14, (("none",),) * 14))
    with pytest.raises(ValueError, match="same number of ops on every edge of both cells"):
        ss.Architecture(edge_primitives=(good[0], tuple(e[:2] for e in good[1])))
    # Subsets must come from ``primitives``.
    with pytest.raises(ValueError, match=r"edge_primitives\[0\]\[0\]="):
        ss.Architecture(primitives=("none", "skip_connect"), edge_primitives=good)
