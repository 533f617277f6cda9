"""P-DARTS' skip-connect dropout (Chen et al., 2019): ``ops.skip_dropout`` and the search cells.

``ops.skip_dropout`` against the stated rule (the mask recomputed here from
``tf.random.stateless_uniform``, the kept values and derivatives in NumPy), its statistics and
its dependence on the batch's noise and the salt; the per-edge cell against NumPy on one-hot
mixing weights; the fused cell against the per-edge one with dropout on (outputs, first- and
second-order derivatives, forward mode); the encoder (unchanged without noise, fused against
per-edge, argument checks); and, in a subprocess with the CPU split into two logical devices,
a 2-replica ``MirroredStrategy`` against a single device (this file's ``__main__``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import ops
from ilnas_tf.fused_cell import FusedSearchCell
from ilnas_tf.genotype import PRIMITIVES
from ilnas_tf.search_cell import SearchCell
from ilnas_tf.search_space import SearchEncoder
from tests.cell_kernels import copy_weights_from_search_cell, search_cell_kernels_to_fused

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-9
STEPS = 2
EDGES = 5  # edges of a 2-step cell: (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)
SKIP = PRIMITIVES.index("skip_connect")
SEP = PRIMITIVES.index("sep_conv_3x3")
# A smaller candidate set for the (slower) second-order, forward-mode and encoder tests.
FEW = ("none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3")


def make_noise(positions, stream=7, batch_index=3):
    """Rows (stream id, batch index, global position) for the examples at ``positions``."""
    return tf.constant([[stream, batch_index, p] for p in positions], tf.int64)


def expected_keep(global_shape, positions, rate, salt, stream=7, batch_index=3):
    """The documented rule, recomputed: a boolean NumPy mask ``[len(positions), H, W, C]``."""
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([stream, batch_index], tf.int64), salt, alg="philox"
    )
    uniform = tf.random.stateless_uniform(global_shape, seed=seed, alg="philox").numpy()
    return uniform[list(positions)] >= np.float32(rate)


def max_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ----------------------------------------------------------------------------- ops.skip_dropout


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16"])
def test_rate_zero_returns_the_input_exactly(dtype):
    x = tf.cast(tf.constant(np.random.default_rng(0).normal(size=(2, 3, 3, 4))), dtype)
    for rate in (0.0, tf.constant(0.0)):
        y = ops.skip_dropout(x, rate, make_noise([0, 1]), salt=5)
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(
            tf.cast(y, tf.float64).numpy(), tf.cast(x, tf.float64).numpy()
        )


def test_keep_fraction_is_one_minus_rate():
    shape = (4, 32, 32, 16)  # n = 65536 entries
    n = int(np.prod(shape))
    for rate in (0.2, 0.5):
        y = ops.skip_dropout(tf.ones(shape), rate, make_noise(range(4)), salt=1)
        kept = float(np.mean(y.numpy() != 0))
        # Binomial: std of the kept fraction sqrt(p (1 - p) / n) (0.0016-0.002 here); 5 std.
        assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n), (rate, kept)


def test_kept_values_dropped_zeros_and_derivative_follow_the_rule():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(3, 5, 6, 4)))
    positions, rate, salt = [2, 0, 1], 0.4, 11
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.skip_dropout(x, rate, make_noise(positions), salt)
        probe = tf.constant(rng.normal(size=y.shape))
        loss = tf.reduce_sum(y * probe)
    keep = expected_keep((3, 5, 6, 4), positions, rate, salt)
    assert 0.4 < keep.mean() < 0.8  # a real mask
    x_np, y_np = x.numpy(), y.numpy()
    np.testing.assert_array_equal(y_np[keep], x_np[keep] / (1 - rate))
    np.testing.assert_array_equal(y_np[~keep], 0.0)
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(grad, probe.numpy() * keep / (1 - rate), rtol=1e-15, atol=0)
    # A tensor rate (as a schedule passes it) and a traced call give the same values.
    traced = tf.function(lambda x, r: ops.skip_dropout(x, r, make_noise(positions), salt))
    np.testing.assert_array_equal(traced(x, tf.constant(rate, tf.float64)).numpy(), y_np)


def test_16_bit_and_float64_inputs_get_the_float32_mask():
    x = tf.constant(np.random.default_rng(2).uniform(1.0, 2.0, size=(2, 4, 4, 8)))
    noise = make_noise([1, 0])
    reference = ops.skip_dropout(tf.cast(x, tf.float32), 0.3, noise, 4).numpy() != 0
    for dtype in (tf.float64, tf.bfloat16, tf.float16):
        y = ops.skip_dropout(tf.cast(x, dtype), 0.3, noise, 4)
        assert y.dtype == dtype
        np.testing.assert_array_equal(tf.cast(y, tf.float32).numpy() != 0, reference)


def test_masks_are_a_function_of_stream_batch_salt_and_position():
    x = tf.ones((2, 4, 4, 8))

    def mask(positions=(0, 1), stream=7, batch_index=3, salt=0):
        noise = make_noise(positions, stream, batch_index)
        return ops.skip_dropout(x, 0.5, noise, salt).numpy() != 0

    base = mask()
    np.testing.assert_array_equal(mask(), base)  # stateless: the same again
    for other in (mask(batch_index=4), mask(salt=1), mask(stream=8)):
        assert np.mean(other != base) > 0.3  # independent masks differ in about half
    # Rows follow the global position: swapping positions swaps the rows.
    np.testing.assert_array_equal(mask(positions=(1, 0)), base[::-1])
    assert np.mean(base[0] != base[1]) > 0.3


def test_a_replica_slice_gets_the_rows_of_the_global_batch(tmp_path):
    """2-replica MirroredStrategy on logical CPUs == one device: ops and encoder (float64)."""
    out = tmp_path / "mirrored.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "logical_cpus.py"), "2", "tests.test_skip_dropout"]
        + [str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.path.dirname(HERE),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(np.load(out))
    for name in ("dropout", "features", "grad_normal", "grad_reduce"):
        single, mirrored = values[f"single_{name}"], values[f"mirrored_{name}"]
        assert np.max(np.abs(single)) > 0, name
        np.testing.assert_allclose(mirrored, single, rtol=0, atol=1e-10, err_msg=name)
    # The dropout is on: the features differ from the dropout-free ones.
    assert max_diff(values["single_features"], values["undropped_features"]) > 1e-3


# ----------------------------------------------------------------------------- cells

CELL_KINDS = {"normal": (False, False), "reduction": (True, False), "reduction_prev": (False, True)}


def make_cell(
    cls, reduction=False, reduction_prev=False, edge_primitives=None, primitives=PRIMITIVES
):
    """A float64 cell (4 channels, 2 steps, multiplier 2) and inputs for it (batch 3)."""
    batch = 3
    args = (6, 8, 4, reduction, reduction_prev, primitives, STEPS, 2, edge_primitives)
    size0 = 16 if reduction_prev else 8
    shape0, shape1 = (batch, size0, size0, 6), (batch, 8, 8, 8)
    cell = cls(*args, dtype="float64")
    cell.build(shape0, shape1)
    rng = np.random.default_rng(3)
    s0, s1 = tf.constant(rng.normal(size=shape0)), tf.constant(rng.normal(size=shape1))
    return cell, s0, s1


def make_pair(kind, edge_primitives=None, primitives=PRIMITIVES):
    """A per-edge and a fused cell with the same kernels, inputs and random mixing weights."""
    reference, s0, s1 = make_cell(SearchCell, *CELL_KINDS[kind], edge_primitives, primitives)
    fused, _, _ = make_cell(FusedSearchCell, *CELL_KINDS[kind], edge_primitives, primitives)
    copy_weights_from_search_cell(fused, reference)
    columns = len(primitives) if edge_primitives is None else len(edge_primitives[0])
    weights = tf.constant(np.random.default_rng(4).normal(size=(EDGES, columns)))
    return reference, fused, (s0, s1, weights)


def one_hot(edge_ops):
    """Mixing weights: 1 for op ``edge_ops[e]`` on edge ``e`` (a dict), zero elsewhere."""
    weights = np.zeros((EDGES, len(PRIMITIVES)))
    for edge, op in edge_ops.items():
        weights[edge, op] = 1.0
    return tf.constant(weights)


def numpy_preprocess(s, kernel):
    """ReLU -> 1x1 conv -> batch-statistics BN (biased variance, eps 1e-5), in NumPy."""
    y = np.maximum(s, 0.0) @ kernel[0, 0]
    mean = y.mean(axis=(0, 1, 2))
    variance = ((y - mean) ** 2).mean(axis=(0, 1, 2))
    return (y - mean) / np.sqrt(variance + 1e-5)


@pytest.mark.parametrize("cls", [SearchCell, FusedSearchCell])
def test_one_hot_skip_connect_edges_drop_out_their_inputs(cls):
    cell, s0, s1 = make_cell(cls)
    rate, positions, base = 0.3, [2, 0, 1], 10
    skip_noise = (rate, make_noise(positions))
    # Edge 1: state 1 -> node 2; edge 4: node 2 -> node 3. Every other weight is zero.
    output = cell(s0, s1, one_hot({1: SKIP, 4: SKIP}), skip_noise=skip_noise, salt=base)
    state1 = numpy_preprocess(s1.numpy(), cell.preprocess1.kernels[0].numpy())
    shape = state1.shape
    node2 = state1 * expected_keep(shape, positions, rate, base + 1) / (1 - rate)
    node3 = node2 * expected_keep(shape, positions, rate, base + 4) / (1 - rate)
    assert np.mean(node2 == 0) > 0.2 and np.mean(node3 == 0) > 0.4
    assert max_diff(output, np.concatenate([node2, node3], axis=-1)) < 1e-12


@pytest.mark.parametrize("cls", [SearchCell, FusedSearchCell])
def test_only_stride_1_skip_connects_are_dropped(cls):
    cell, s0, s1 = make_cell(cls)
    skip_noise = (0.5, make_noise([0, 1, 2]))
    for weights in (one_hot({1: SEP, 4: SEP}), one_hot({0: PRIMITIVES.index("max_pool_3x3")})):
        undropped = cell(s0, s1, weights)
        np.testing.assert_array_equal(cell(s0, s1, weights, skip_noise=skip_noise), undropped)
    # Reduction: the input edges' skip_connect is a FactorizedReduce, untouched; the stride-1
    # edge between the nodes is dropped.
    cell, s0, s1 = make_cell(cls, reduction=True)
    weights = one_hot({0: SKIP, 1: SKIP, 2: SKIP, 3: SKIP})
    np.testing.assert_array_equal(
        cell(s0, s1, weights, skip_noise=skip_noise), cell(s0, s1, weights)
    )
    weights = one_hot({0: SKIP, 4: SKIP})
    assert max_diff(cell(s0, s1, weights, skip_noise=skip_noise), cell(s0, s1, weights)) > 0.1


def gradients(cell, inputs, skip_noise, salt, probe):
    s0, s1, weights = inputs
    with tf.GradientTape() as tape:
        tape.watch([s0, s1, weights])
        output = cell(s0, s1, weights, skip_noise=skip_noise, salt=salt)
        loss = tf.reduce_sum(output * probe)
    grads = tape.gradient(loss, [s0, s1, weights] + cell.kernels)
    return output, grads[:3], grads[3:]


# Per-edge subsets (P-DARTS pruning): skip_connect on edges 0, 2, 4 only, in varying columns.
SUBSETS = (
    ("skip_connect", "sep_conv_3x3", "none"),
    ("max_pool_3x3", "dil_conv_3x3", "sep_conv_3x3"),
    ("sep_conv_3x3", "skip_connect", "avg_pool_3x3"),
    ("dil_conv_5x5", "none", "sep_conv_3x3"),
    ("avg_pool_3x3", "sep_conv_3x3", "skip_connect"),
)


@pytest.mark.parametrize(
    "kind,edge_primitives",
    [("normal", None), ("reduction", None), ("reduction_prev", None), ("normal", SUBSETS)],
)
def test_fused_cell_matches_per_edge_cell_with_dropout(kind, edge_primitives):
    reference, fused, inputs = make_pair(kind, edge_primitives)
    skip_noise, salt = (tf.constant(0.4, tf.float64), make_noise([1, 2, 0])), 20
    probe = tf.constant(np.random.default_rng(5).normal(size=reference(*inputs).shape))
    ref_out, ref_input_grads, ref_kernel_grads = gradients(
        reference, inputs, skip_noise, salt, probe
    )
    out, input_grads, kernel_grads = gradients(fused, inputs, skip_noise, salt, probe)
    assert max_diff(ref_out, reference(*inputs)) > 1e-2  # the dropout changed something
    assert max_diff(ref_out, out) < TOL
    for name, a, b in zip(["s0", "s1", "weights"], ref_input_grads, input_grads):
        assert float(tf.reduce_max(tf.abs(a))) > 0, name
        assert max_diff(a, b) < TOL, name
    mapped = search_cell_kernels_to_fused(fused, reference, ref_kernel_grads)
    for variable, a, b in zip(fused.kernels, mapped, kernel_grads):
        assert max_diff(a, b) < TOL, variable.path
    # Another salt base draws other masks (in both cells alike).
    other = fused(*inputs, skip_noise=skip_noise, salt=salt + EDGES)
    assert max_diff(other, out) > 1e-2
    assert max_diff(reference(*inputs, skip_noise=skip_noise, salt=salt + EDGES), other) < TOL


@pytest.mark.parametrize("kind", ["normal", "reduction"])
def test_second_order_and_forward_mode_match_with_dropout(kind):
    reference, fused, (s0, s1, weights) = make_pair(kind, primitives=FEW)
    skip_noise = (0.3, make_noise([0, 1, 2]))

    def hyper(cell):
        """d/d(weights) of the squared norm of the kernel gradient (a hypergradient term)."""
        with tf.GradientTape() as outer:
            outer.watch(weights)
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(tf.sin(cell(s0, s1, weights, skip_noise=skip_noise)))
            grads = inner.gradient(loss, cell.kernels)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return norm, outer.gradient(norm, weights)

    ref_norm, ref_grad = hyper(reference)
    fused_norm, fused_grad = hyper(fused)
    scale = max(1.0, float(tf.reduce_max(tf.abs(ref_grad))))
    assert float(tf.reduce_max(tf.abs(ref_grad))) > 0
    assert abs(float(ref_norm - fused_norm)) < TOL * max(1.0, float(ref_norm))
    assert max_diff(ref_grad, fused_grad) < TOL * scale

    # Forward mode along a tangent of the mixing weights == <reverse-mode gradient, tangent>.
    tangent = tf.constant(np.random.default_rng(6).normal(size=weights.shape))
    probe = tf.constant(np.random.default_rng(7).normal(size=reference(s0, s1, weights).shape))
    with tf.autodiff.ForwardAccumulator(weights, tangent) as accumulator:
        loss = tf.reduce_sum(fused(s0, s1, weights, skip_noise=skip_noise) * probe)
    _, (_, _, grad), _ = gradients(reference, (s0, s1, weights), skip_noise, 0, probe)
    expected = float(tf.reduce_sum(grad * tangent))
    assert abs(float(accumulator.jvp(loss)) - expected) < TOL * max(1.0, abs(expected))


# ----------------------------------------------------------------------------- encoder


def make_encoder(cell_impl="fused", skip_dropout=True, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    encoder = SearchEncoder(
        channels=4,
        layers=3,
        steps=STEPS,
        multiplier=2,
        primitives=FEW,
        cell_impl=cell_impl,
        skip_dropout=skip_dropout,
        dtype="float64",
        **kwargs,
    )
    encoder.build((2, 8, 8, 3))
    return encoder


def encoder_inputs(batch=2):
    rng = np.random.default_rng(8)
    images = tf.constant(rng.normal(size=(batch, 8, 8, 3)))
    normal = tf.nn.softmax(tf.constant(rng.normal(size=(EDGES, len(FEW)))))
    reduce = tf.nn.softmax(tf.constant(rng.normal(size=(EDGES, len(FEW)))))
    return images, normal, reduce


def test_encoder_without_noise_is_unchanged():
    images, normal, reduce = encoder_inputs()
    plain = make_encoder(skip_dropout=False)
    dropout = make_encoder(skip_dropout=True)
    assert len(plain.weights) == len(dropout.weights)
    for a, b in zip(plain.weights, dropout.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    expected = plain(images, normal, reduce).numpy()
    np.testing.assert_array_equal(dropout(images, normal, reduce).numpy(), expected)
    np.testing.assert_array_equal(dropout(images, normal, reduce, skip_noise=None), expected)
    dropped = dropout(images, normal, reduce, skip_noise=(0.3, make_noise([0, 1])))
    assert max_diff(dropped, expected) > 1e-3
    config = dropout.get_config()
    assert config["skip_dropout"] is True and plain.get_config()["skip_dropout"] is False
    assert SearchEncoder.from_config(config).skip_dropout is True


def encoder_loss(encoder, values, images, normal, reduce, skip_noise):
    """Features and ``sum(sin(features))``. (Without dropout this loss is 0 for a batch of 2:
    batch-statistics BN makes the two examples' features opposite; with dropout it is not.)"""
    features, _ = encoder.stateless_call(values, [], images, normal, reduce, skip_noise=skip_noise)
    return features, tf.reduce_sum(tf.sin(features))


def test_encoder_fused_matches_per_edge_under_stateless_call():
    images, normal, reduce = encoder_inputs()
    per_edge = make_encoder("per_edge")
    fused = make_encoder("fused")
    for name in ("stem_kernel", "stem_gamma", "stem_beta"):
        getattr(fused, name).assign(getattr(per_edge, name))
    for fused_cell, cell in zip(fused.cells, per_edge.cells):
        copy_weights_from_search_cell(fused_cell, cell)
    skip_noise = (0.3, make_noise([1, 0]))
    results = []
    for encoder in (per_edge, fused):
        values = [v.value for v in encoder.trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch([normal, reduce, values[0]])
            features, loss = encoder_loss(encoder, values, images, normal, reduce, skip_noise)
        results.append([features] + tape.gradient(loss, [normal, reduce, values[0]]))
    assert max_diff(results[0][0], per_edge(images, normal, reduce)) > 1e-3
    for name, a, b in zip(["features", "normal", "reduce", "stem"], *results):
        assert float(tf.reduce_max(tf.abs(a))) > 0, name
        assert max_diff(a, b) < TOL * max(1.0, float(tf.reduce_max(tf.abs(a)))), name


def test_encoder_second_order_traced_equals_eager_and_finite_differences():
    """Nested tapes through stateless_call (flat weights and mixing), eager and traced; the
    masks are a function of the batch, so central differences see the same function."""
    images, normal, reduce = encoder_inputs()
    encoder = make_encoder("fused")
    values = [v.value for v in encoder.trainable_variables]
    skip_noise = (tf.constant(0.3, tf.float64), make_noise([1, 0]))

    def norm_of_gradient(normal, values):
        with tf.GradientTape() as inner:
            inner.watch(values)
            _, loss = encoder_loss(encoder, values, images, normal, reduce, skip_noise)
        grads = inner.gradient(loss, values)
        return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])

    def second_order(normal, values):
        with tf.GradientTape() as outer:
            outer.watch([normal] + values)
            norm = norm_of_gradient(normal, values)
        return [norm] + outer.gradient(norm, [normal, values[0]])

    eager = second_order(normal, values)
    traced = tf.function(second_order)(normal, values)
    for name, a, b in zip(["norm", "normal", "stem"], eager, traced):
        assert float(tf.reduce_max(tf.abs(a))) > 0, name
        assert max_diff(a, b) < 1e-12 * max(1.0, float(tf.reduce_max(tf.abs(a)))), name
    # Central differences: batch-statistics BN on 2x2 maps makes this tiny problem strongly
    # curved (step 1e-5 is off by 2e-5 relative, 1e-6 by 3e-7; round-off ~1e-9 here).
    direction = tf.constant(np.random.default_rng(10).normal(size=normal.shape))
    step = 1e-6
    difference = norm_of_gradient(normal + step * direction, values) - norm_of_gradient(
        normal - step * direction, values
    )
    expected = float(tf.reduce_sum(eager[1] * direction))
    assert abs(float(difference) / (2 * step) - expected) < 1e-5 * max(1.0, abs(expected))


def test_encoder_cells_use_their_own_salt_base():
    images, normal, reduce = encoder_inputs()
    encoder = make_encoder("per_edge")
    skip_noise = (0.3, make_noise([0, 1]))
    expected = encoder(images, normal, reduce, skip_noise=skip_noise)
    # The same forward pass by hand: stem, then cell i with salt base i * EDGES.
    s = ops.conv2d(images, encoder.stem_kernel, 1, 1)
    s0 = s1 = ops.batch_norm(s, encoder.stem_gamma, encoder.stem_beta)
    for index, cell in enumerate(encoder.cells):
        weights = reduce if cell.reduction else normal
        s0, s1 = s1, cell(s0, s1, weights, skip_noise=skip_noise, salt=index * EDGES)
    assert max_diff(tf.reduce_mean(s1, axis=[1, 2]), expected) < 1e-12
    s0 = s1 = ops.batch_norm(s, encoder.stem_gamma, encoder.stem_beta)
    for cell in encoder.cells:  # every cell with salt base 0: other masks
        weights = reduce if cell.reduction else normal
        s0, s1 = s1, cell(s0, s1, weights, skip_noise=skip_noise, salt=0)
    assert max_diff(tf.reduce_mean(s1, axis=[1, 2]), expected) > 1e-4


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match=r"skip_dropout=True is invalid.*partial_channels=2.*not"):
        SearchEncoder(channels=4, layers=3, steps=STEPS, partial_channels=2, skip_dropout=True)
    with pytest.raises(ValueError, match=r"skip_dropout=True is invalid.*recompute='cells'.*not"):
        SearchEncoder(channels=4, layers=3, steps=STEPS, recompute="cells", skip_dropout=True)
    with pytest.raises(ValueError, match=r"skip_dropout='yes' is invalid"):
        SearchEncoder(channels=4, layers=3, steps=STEPS, skip_dropout="yes")
    images, normal, reduce = encoder_inputs()
    plain = make_encoder(skip_dropout=False)
    with pytest.raises(ValueError, match=r"(?s)skip_noise=.*is invalid.*skip_dropout=False"):
        plain(images, normal, reduce, skip_noise=(0.3, make_noise([0, 1])))
    with pytest.raises(ValueError, match=r"(?s)skip_noise=.*is invalid.*skip_dropout=False"):
        plain.stateless_call(
            [v.value for v in plain.trainable_variables],
            [],
            images,
            normal,
            reduce,
            skip_noise=(0.3, make_noise([0, 1])),
        )
    encoder = make_encoder()
    with pytest.raises(ValueError, match=r"skip_noise\[0\]=1.0 is invalid"):
        encoder(images, normal, reduce, skip_noise=(1.0, make_noise([0, 1])))
    with pytest.raises(ValueError, match=r"skip_noise=.*is invalid.*2 items"):
        encoder(images, normal, reduce, skip_noise=(0.3,))
    x, noise = tf.ones((2, 2, 2, 2)), make_noise([0, 1])
    for rate in (1.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="rate="):
            ops.skip_dropout(x, rate, noise, 0)
    with pytest.raises(ValueError, match="noise="):
        ops.skip_dropout(x, 0.1, tf.zeros((2, 3)), 0)  # float noise
    with pytest.raises(ValueError, match="noise="):
        ops.skip_dropout(x, 0.1, noise[:, :2], 0)
    with pytest.raises(ValueError, match="salt="):
        ops.skip_dropout(x, 0.1, noise, 1.5)
    cell = SearchCell(4, 4, 4, False, False, steps=STEPS, multiplier=2, partial_channels=2)
    cell.build((2, 8, 8, 4), (2, 8, 8, 4))
    with pytest.raises(ValueError, match="partial channel connections"):
        cell(tf.ones((2, 8, 8, 4)), tf.ones((2, 8, 8, 4)), tf.ones((EDGES, 8)), (0.1, noise))
    with pytest.raises(ValueError, match="partial channel connections"):
        cell.forward(
            cell.kernels,
            tf.ones((2, 8, 8, 4)),
            tf.ones((2, 8, 8, 4)),
            tf.ones((EDGES, 8)),
            skip_noise=(0.1, noise),
        )


# ----------------------------------------------------------------------------- 2 replicas


def _mirrored_main(out_path):
    """Run by ``logical_cpus.py 2``: one device vs. a 2-replica MirroredStrategy, float64."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(9)
    x = tf.constant(rng.normal(size=(4, 6, 6, 3)))
    noise = make_noise(range(4))
    images, normal, reduce = encoder_inputs(batch=4)
    probe = tf.constant(rng.normal(size=(4, 32)))  # output_channels of the tiny encoder
    encoder = make_encoder("fused")
    values = [v.value for v in encoder.trainable_variables]
    rate = tf.constant(0.3, tf.float64)

    def step(x, noise, images, probe):
        dropout = ops.skip_dropout(x, rate, noise, 17)
        with tf.GradientTape() as tape:
            tape.watch([normal, reduce])
            features, _ = encoder.stateless_call(
                values, [], images, normal, reduce, skip_noise=(rate, noise)
            )
            loss = tf.reduce_sum(features * probe)
        return [dropout, features] + tape.gradient(loss, [normal, reduce])

    single = step(x, noise, images, probe)
    undropped = encoder(images, normal, reduce)

    def split(tensor):  # replica r gets rows [2r, 2r + 2) of the global batch
        return strategy.experimental_distribute_values_from_function(
            lambda context: tensor[2 * context.replica_id_in_sync_group :][:2]
        )

    # Eager (a traced step costs more to trace than this tiny problem costs to run).
    results = strategy.run(step, args=tuple(split(t) for t in (x, noise, images, probe)))
    local = [strategy.experimental_local_results(r) for r in results]
    mirrored = [tf.concat(local[0], 0), tf.concat(local[1], 0), tf.add_n(local[2])]
    mirrored.append(tf.add_n(local[3]))
    names = ("dropout", "features", "grad_normal", "grad_reduce")
    arrays = {f"single_{n}": v.numpy() for n, v in zip(names, single)}
    arrays.update({f"mirrored_{n}": v.numpy() for n, v in zip(names, mirrored)})
    np.savez(out_path, undropped_features=undropped.numpy(), **arrays)


if __name__ == "__main__":
    _mirrored_main(sys.argv[1])
