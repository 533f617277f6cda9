"""Tests for PC-DARTS' partial channel connections (Xu et al., 2020, "PC-DARTS: Partial Channel
Connections for Memory-Efficient Architecture Search") in the per-edge cell: ``MixedOp`` and
``SearchCell`` with ``partial_channels`` K > 1, against independent NumPy computations (a
hand-built shuffle permutation, NumPy max pooling and batch norm), plus ``ops.channel_shuffle``
and ``ops.max_pool_2x2`` on their own, parameter counts from the layer rules, the layer
contract, and K = 1 being exactly DARTS."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import ops
from ilnas_tf import search_space as ss
from ilnas_tf.genotype import PRIMITIVES
from tests.layer_test_utils import count_params, run_layer_test
from tests.test_search_space import derived_supernet_params, op_params

EPS = 1e-5  # the ops' batch-norm epsilon (PyTorch's default)
C, K = 8, 4
OPC = C // K  # channels the candidate ops see


def rng_normal(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def positive_weights(shape, seed):
    """Mixing weights whose rows do not sum to 1 (so the bypass scaling is visible)."""
    return np.random.default_rng(seed).uniform(0.2, 1.5, shape)


def np_batch_norm(x):
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + EPS)


def np_max_pool_2x2(x):
    """2x2 max pooling with stride 2 (even sizes), by reshaping into the windows."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def shuffle_index(channels, groups):
    """Position ``p`` of the shuffled tensor holds input channel ``index[p]``.

    Written out from the definition: input channel ``g * (channels // groups) + j`` (channel
    ``j`` of group ``g``) goes to position ``j * groups + g``.
    """
    per_group = channels // groups
    index = np.full(channels, -1)
    for g in range(groups):
        for j in range(per_group):
            index[j * groups + g] = g * per_group + j
    assert sorted(index) == list(range(channels))
    return index


def split_positions():
    """Output positions of a K-shuffled edge that hold the op sum, and those of the bypass."""
    index = shuffle_index(C, K)
    return np.flatnonzero(index < OPC), np.flatnonzero(index >= OPC)


def standalone_ops(mixed, input_shape):
    """The mixed op's candidates built again with ``ops.make_op`` for ``C // K`` channels,
    holding the mixed op's kernels: ``{name: op}``."""
    by_name = {op.name: op for op in mixed.candidates}
    result = {}
    for name in mixed.primitives:
        if name == "none":
            continue
        op = ops.make_op(name, OPC, mixed.stride, False, dtype="float64", name=name)
        op.build(tuple(input_shape[:-1]) + (OPC,))
        for mine, theirs in zip(op.kernels, by_name[name].kernels, strict=True):
            assert tuple(mine.shape) == tuple(theirs.shape)
            mine.assign(theirs)
        result[name] = op
    return result


def expected_edge(mixed, x, weights):
    """The PC-DARTS edge output from standalone ops, NumPy pooling and the hand permutation."""
    x = np.asarray(x)
    standalone = standalone_ops(mixed, x.shape)
    x_ops, x_bypass = x[..., :OPC], x[..., OPC:]
    y = 0.0
    for j, name in enumerate(mixed.primitives):
        if name == "none":
            continue
        out = standalone[name](tf.constant(x_ops)).numpy()
        if "pool" in name:
            out = np_batch_norm(out)
        y = y + weights[j] * out
    bypass = np_max_pool_2x2(x_bypass) if mixed.stride == 2 else x_bypass
    if isinstance(y, float):  # only 'none'
        y = np.zeros(bypass.shape[:-1] + (OPC,))
    concatenated = np.concatenate([y, np.sum(weights) * bypass], axis=-1)
    return concatenated[..., shuffle_index(C, K)], concatenated


# ----------------------------------------------------------------------------- ops helpers


@pytest.mark.parametrize("channels,groups", [(8, 4), (8, 2), (6, 3), (12, 4), (8, 8), (5, 1)])
def test_channel_shuffle_matches_hand_built_permutation(channels, groups):
    x = rng_normal((2, 3, 2, channels), seed=channels + groups)
    out = ops.channel_shuffle(tf.constant(x), groups).numpy()
    np.testing.assert_array_equal(out, x[..., shuffle_index(channels, groups)])
    if (channels, groups) == (8, 4):  # written out: groups [0 1][2 3][4 5][6 7] interleaved
        np.testing.assert_array_equal(shuffle_index(8, 4), [0, 2, 4, 6, 1, 3, 5, 7])


def test_max_pool_2x2_matches_numpy_with_derivatives():
    x = tf.constant(rng_normal((2, 6, 4, 3), seed=1))  # distinct values: no ties
    probe = rng_normal((2, 3, 2, 3), seed=2)
    v = rng_normal(x.shape, seed=3)
    pooled_np = np_max_pool_2x2(x.numpy())
    # The argmax of every window, as a 0/1 mask on the input.
    windows = x.numpy().reshape(2, 3, 2, 2, 2, 3)
    mask = (windows == pooled_np[:, :, None, :, None, :]).astype(np.float64).reshape(x.shape)
    assert mask.sum() == pooled_np.size
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            pooled = ops.max_pool_2x2(x)
            loss = tf.reduce_sum(probe * pooled**2)
        grad = inner.gradient(loss, x)
        grad_v = tf.reduce_sum(grad * v)
    hvp = outer.gradient(grad_v, x)
    np.testing.assert_array_equal(pooled.numpy(), pooled_np)

    def up(a):  # a pooled-sized array spread over its windows
        return np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)

    np.testing.assert_allclose(grad.numpy(), mask * up(2 * probe * pooled_np), rtol=1e-14)
    # d/dx <grad, v> = 2 * probe * v[argmax] at the argmax.
    v_at_max = np_max_pool_2x2(np.where(mask > 0, v, -np.inf))
    np.testing.assert_allclose(hvp.numpy(), mask * up(2 * probe * v_at_max), rtol=1e-14)


# ----------------------------------------------------------------------------- MixedOp


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_matches_independent_computation(stride):
    x = rng_normal((2, 8, 8, C), seed=10 + stride)
    mixed = ss.MixedOp(C, stride, partial_channels=K, dtype="float64")
    weights = positive_weights(len(PRIMITIVES), seed=stride)
    out = mixed(tf.constant(x), tf.constant(weights)).numpy()
    assert out.shape == (2, 8 // stride, 8 // stride, C)
    assert mixed.op_channels == OPC
    assert all(op.c_in == op.c_out == OPC for op in mixed.candidates)
    expected, unshuffled = expected_edge(mixed, x, weights)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)
    assert np.abs(expected[..., split_positions()[0]]).max() > 0.1  # the ops contribute
    assert np.abs(out - unshuffled).max() > 0.1  # the shuffle matters


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_ops_and_bypass_channels_are_separate(stride):
    x = tf.constant(rng_normal((2, 8, 8, C), seed=20 + stride))
    mixed = ss.MixedOp(C, stride, partial_channels=K, dtype="float64")
    weights = tf.constant(positive_weights(len(PRIMITIVES), seed=21))
    op_positions, bypass_positions = split_positions()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = mixed(x, weights)
        op_part = tf.gather(out, op_positions, axis=-1)
        bypass_part = tf.gather(out, bypass_positions, axis=-1)
        op_loss = tf.reduce_sum(op_part * rng_normal(op_part.shape, seed=22))
        bypass_loss = tf.reduce_sum(bypass_part * rng_normal(bypass_part.shape, seed=23))
    g_op = tape.gradient(op_loss, x).numpy()
    g_bypass = tape.gradient(bypass_loss, x).numpy()
    # The op outputs depend on the first C/K input channels only, the bypass on the others.
    assert np.all(g_op[..., OPC:] == 0.0) and np.abs(g_op[..., :OPC]).max() > 1e-3
    assert np.all(g_bypass[..., :OPC] == 0.0) and np.abs(g_bypass[..., OPC:]).max() > 1e-3

    # Replacing the bypass channels leaves the op part bitwise unchanged, and vice versa.
    other = rng_normal(x.shape, seed=24)
    new_bypass = np.concatenate([x.numpy()[..., :OPC], other[..., OPC:]], axis=-1)
    new_ops = np.concatenate([other[..., :OPC], x.numpy()[..., OPC:]], axis=-1)
    out_bypass = mixed(tf.constant(new_bypass), weights).numpy()
    out_ops = mixed(tf.constant(new_ops), weights).numpy()
    np.testing.assert_array_equal(out_bypass[..., op_positions], op_part.numpy())
    np.testing.assert_array_equal(out_ops[..., bypass_positions], bypass_part.numpy())
    assert np.abs(out_bypass[..., bypass_positions] - bypass_part.numpy()).max() > 0.1
    assert np.abs(out_ops[..., op_positions] - op_part.numpy()).max() > 0.1


@pytest.mark.parametrize("stride", [1, 2])
def test_bypass_is_scaled_by_the_row_sum(stride):
    x = rng_normal((2, 8, 8, C), seed=30 + stride)
    mixed = ss.MixedOp(C, stride, partial_channels=K, dtype="float64")
    op_positions, bypass_positions = split_positions()
    bypass_in = np_max_pool_2x2(x[..., OPC:]) if stride == 2 else x[..., OPC:]
    # Bypass channel m sits at the position whose source is channel OPC + m.
    source = shuffle_index(C, K)[bypass_positions] - OPC
    weights = positive_weights(len(PRIMITIVES), seed=31)
    base = mixed(tf.constant(x), tf.constant(weights)).numpy()
    for factor in (2.5, 0.1):
        scaled = mixed(tf.constant(x), tf.constant(factor * weights)).numpy()
        np.testing.assert_allclose(
            scaled[..., bypass_positions],
            factor * np.sum(weights) * bypass_in[..., source],
            rtol=1e-14,
        )
        # The op part is linear in the weights too.
        np.testing.assert_allclose(
            scaled[..., op_positions], factor * base[..., op_positions], rtol=1e-12, atol=1e-14
        )
    # A softmax row (sum 1, DARTS): the bypass passes unchanged.
    softmax = np.exp(weights) / np.exp(weights).sum()
    out = mixed(tf.constant(x), tf.constant(softmax)).numpy()
    np.testing.assert_allclose(out[..., bypass_positions], bypass_in[..., source], rtol=1e-15)
    # The 'none' column counts in the row sum but leaves the op part bitwise unchanged.
    changed = weights.copy()
    changed[PRIMITIVES.index("none")] += 3.0
    out = mixed(tf.constant(x), tf.constant(changed)).numpy()
    np.testing.assert_array_equal(out[..., op_positions], base[..., op_positions])
    np.testing.assert_allclose(
        out[..., bypass_positions], np.sum(changed) * bypass_in[..., source], rtol=1e-14
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_only_none_edge_passes_the_scaled_bypass(stride):
    x = rng_normal((2, 8, 8, C), seed=40 + stride)
    mixed = ss.MixedOp(C, stride, primitives=("none",), partial_channels=K, dtype="float64")
    assert mixed.kernels == []
    out = mixed(tf.constant(x), tf.constant([1.75])).numpy()
    expected, _ = expected_edge(mixed, x, np.array([1.75]))
    op_positions, _ = split_positions()
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    assert np.all(out[..., op_positions] == 0.0)


def test_partial_channels_one_is_darts_bitwise():
    for stride in (1, 2):
        x = tf.constant(rng_normal((2, 8, 8, C), seed=50 + stride))
        weights = tf.constant(positive_weights(len(PRIMITIVES), seed=51))
        default = ss.MixedOp(C, stride, dtype="float64")
        explicit = ss.MixedOp(C, stride, partial_channels=1, dtype="float64")
        default.build(x.shape)
        explicit.build(x.shape)
        for mine, theirs in zip(explicit.kernels, default.kernels, strict=True):
            mine.assign(theirs)
        assert default.get_config()["partial_channels"] == 1
        assert explicit.get_config() == {**default.get_config(), "name": explicit.name}
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, weights])
            a, b = default(x, weights), explicit(x, weights)
            la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        for ga, gb in zip(tape.gradient(la, [x, weights]), tape.gradient(lb, [x, weights])):
            np.testing.assert_array_equal(ga.numpy(), gb.numpy())
    # The same for a cell.
    s0 = tf.constant(rng_normal((2, 8, 8, 6), seed=52))
    s1 = tf.constant(rng_normal((2, 8, 8, 5), seed=53))
    weights = tf.constant(positive_weights((5, len(PRIMITIVES)), seed=54))
    cells = [
        ss.SearchCell(6, 5, C, True, False, steps=2, multiplier=2, dtype="float64", **extra)
        for extra in ({}, {"partial_channels": 1})
    ]
    for cell in cells:
        cell.build(s0.shape, s1.shape)
    for mine, theirs in zip(cells[1].kernels, cells[0].kernels, strict=True):
        mine.assign(theirs)
    np.testing.assert_array_equal(cells[0](s0, s1, weights), cells[1](s0, s1, weights))


def test_bad_partial_channels_are_rejected():
    for bad in (0, -4, 3, 16, True, 2.0, "4"):
        with pytest.raises(ValueError, match=rf"partial_channels={bad!r} is invalid"):
            ss.MixedOp(C, 1, partial_channels=bad)
        with pytest.raises(ValueError, match=rf"partial_channels={bad!r} is invalid"):
            ss.SearchCell(6, 5, C, False, False, steps=2, multiplier=2, partial_channels=bad)
    # A stride-2 skip_connect (FactorizedReduce) needs an even op channel count.
    with pytest.raises(ValueError, match=r"partial_channels=4 is invalid.*even number"):
        ss.MixedOp(4, 2, partial_channels=4)
    ss.MixedOp(4, 1, partial_channels=4)  # stride 1: skip_connect is an identity
    ss.MixedOp(4, 2, primitives=("none", "max_pool_3x3"), partial_channels=4)
    # Odd spatial sizes: rejected at reduction cells and stride-2 edges, fine elsewhere.
    with pytest.raises(ValueError, match=r"input shape=\(2, 7, 7, 5\) is invalid.*even height"):
        ss.SearchCell(6, 5, C, True, False, steps=2, multiplier=2, partial_channels=K).build(
            (2, 7, 7, 6), (2, 7, 7, 5)
        )
    with pytest.raises(ValueError, match=r"input shape=\(2, 8, 5, 8\) is invalid.*even height"):
        ss.MixedOp(C, 2, partial_channels=K).build((2, 8, 5, C))
    with pytest.raises(ValueError, match=r"expects 8 input channels"):
        ss.MixedOp(C, 1, partial_channels=K).build((2, 8, 8, 4))
    normal = ss.SearchCell(6, 5, C, False, False, steps=2, multiplier=2, partial_channels=K)
    out = normal(tf.zeros((2, 7, 7, 6)), tf.zeros((2, 7, 7, 5)), tf.ones((5, len(PRIMITIVES))))
    assert tuple(out.shape) == (2, 7, 7, 2 * C)


# ----------------------------------------------------------------------------- SearchCell


def derived_cell_params(c_prev_prev, c_prev, channels, reduction, steps, partial_channels):
    """A per-edge PC-DARTS cell's trainable parameters from the layer rules: 1x1 preprocessing
    (or FactorizedReduce, two halves) at the full channels, the ops at ``channels // K``."""
    total = c_prev_prev * channels + c_prev * channels
    for node in range(steps):
        for source in range(2 + node):
            stride = 2 if reduction and source < 2 else 1
            total += sum(op_params(p, channels // partial_channels, stride) for p in PRIMITIVES)
    return total


@pytest.mark.parametrize(
    "reduction,reduction_prev", [(False, False), (True, False), (False, True), (True, True)]
)
def test_partial_channel_cell_parameter_count(reduction, reduction_prev):
    cell = ss.SearchCell(6, 5, C, reduction, reduction_prev, partial_channels=K)
    h0 = 8
    h1 = 4 if reduction_prev else 8
    cell.build((2, h0, h0, 6), (2, h1, h1, 5))
    assert count_params(cell.trainable_weights) == derived_cell_params(6, 5, C, reduction, 4, K)
    assert cell.preprocess0.c_out == cell.preprocess1.c_out == C
    for edge in cell.edges:
        assert edge.partial_channels == K and edge.channels == C and edge.op_channels == OPC
        assert all(op.c_in == op.c_out == OPC for op in edge.candidates)


def test_partial_channel_encoder_parameter_count():
    encoder = ss.SearchEncoder(
        8, 5, steps=2, multiplier=2, cell_impl="per_edge", partial_channels=K
    )
    encoder.build((None, 16, 16, 3))
    head = ss.ClassifierHead(10)
    head.build((None, encoder.output_channels))
    total = count_params(encoder.trainable_weights) + count_params(head.trainable_weights)
    small = dict(steps=2, multiplier=2)
    assert total == derived_supernet_params(8, 5, 10, **small, partial_channels=K)
    assert total < derived_supernet_params(8, 5, 10, **small)
    assert all(cell.partial_channels == K for cell in encoder.cells)
    assert [cell.edges[0].op_channels for cell in encoder.cells] == [2, 4, 4, 8, 8]


def test_reduction_cell_gradients_match_finite_differences():
    keras.utils.set_random_seed(60)
    cell = ss.SearchCell(
        6, 5, C, True, False, steps=2, multiplier=2, partial_channels=K, dtype="float64"
    )
    cell.build((2, 8, 8, 6), (2, 8, 8, 5))
    s0 = tf.constant(rng_normal((2, 8, 8, 6), seed=61))
    s1 = tf.constant(rng_normal((2, 8, 8, 5), seed=62))
    weights = tf.constant(positive_weights((5, len(PRIMITIVES)), seed=63))
    probe = tf.constant(rng_normal((2, 4, 4, 2 * C), seed=64))

    def loss(a, b, w):
        return tf.reduce_sum(cell(a, b, w) * probe)

    with tf.GradientTape() as tape:
        tape.watch([s0, s1, weights])
        value = loss(s0, s1, weights)
    g0, g1, gw = tape.gradient(value, [s0, s1, weights])
    h = 1e-6
    rng = np.random.default_rng(65)
    checks = []
    for _ in range(2):
        d0, d1 = rng.standard_normal(s0.shape), rng.standard_normal(s1.shape)
        fd = loss(s0 + h * d0, s1 + h * d1, weights) - loss(s0 - h * d0, s1 - h * d1, weights)
        checks.append((np.sum(g0 * d0) + np.sum(g1 * d1), fd.numpy() / (2 * h)))
    # The weights: a random direction, and the 'none' column alone (its only path is the
    # bypass scaling sum(w)).
    none_only = np.zeros(weights.shape)
    none_only[:, PRIMITIVES.index("none")] = 1.0
    for dw in (rng.standard_normal(weights.shape), none_only):
        fd = loss(s0, s1, weights + h * dw) - loss(s0, s1, weights - h * dw)
        checks.append((np.sum(gw * dw), fd.numpy() / (2 * h)))
    analytic, numeric = np.array(checks).T
    assert np.all(np.abs(analytic) > 1e-3), analytic
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- layer contract


def test_mixed_op_layer_partial_channels():
    x = tf.constant(rng_normal((2, 8, 8, C), seed=70, dtype=np.float32))
    weights = tf.constant(positive_weights(len(PRIMITIVES), seed=71).astype(np.float32))
    run_layer_test(
        ss.MixedOp,
        dict(channels=C, stride=2, primitives=list(PRIMITIVES), partial_channels=K),
        (x, weights),
        (2, 4, 4, C),
        expected_num_trainable_params=sum(op_params(p, OPC, 2) for p in PRIMITIVES),
        rtol=1e-5,
        atol=1e-5,
    )


def test_search_cell_layer_partial_channels():
    s0 = tf.constant(rng_normal((2, 8, 8, 6), seed=72, dtype=np.float32))
    s1 = tf.constant(rng_normal((2, 8, 8, 5), seed=73, dtype=np.float32))
    weights = tf.constant(positive_weights((5, len(PRIMITIVES)), seed=74).astype(np.float32))
    cell = run_layer_test(
        ss.SearchCell,
        dict(
            c_prev_prev=6,
            c_prev=5,
            channels=C,
            reduction=True,
            reduction_prev=False,
            steps=2,
            multiplier=2,
            partial_channels=K,
        ),
        (s0, s1, weights),
        (2, 4, 4, 2 * C),
        expected_num_trainable_params=derived_cell_params(6, 5, C, True, 2, K),
        rtol=1e-5,
        atol=1e-5,
    )
    assert cell.spec[-1] == K


def test_search_encoder_layer_partial_channels():
    keras.utils.set_random_seed(75)
    images = tf.constant(rng_normal((2, 8, 8, 3), seed=76, dtype=np.float32))
    weights = tf.constant(positive_weights((5, len(PRIMITIVES)), seed=77).astype(np.float32))
    encoder = run_layer_test(
        ss.SearchEncoder,
        dict(channels=C, layers=3, steps=2, multiplier=2, cell_impl="per_edge", partial_channels=K),
        (images, weights, weights),
        (2, 2 * 4 * C),
        rtol=1e-4,
        atol=1e-5,
    )
    assert [cell.partial_channels for cell in encoder.cells] == [K] * 3
