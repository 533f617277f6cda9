"""FusedSearchCell with PC-DARTS' partial channel connections (Xu et al., 2020) computes exactly
the per-edge SearchCell's function: outputs, first- and second-order gradients (float64,
kernels copied edge by edge, mixing weights whose rows do not sum to 1 so the bypass scaling
matters), parameter counts, config round trips and the even-size / channel checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf.fused_cell import FusedSearchCell
from ilnas_tf.genotype import PRIMITIVES
from ilnas_tf.search_cell import SearchCell
from ilnas_tf.search_space import SearchEncoder
from tests.cell_kernels import (
    copy_weights_from_search_cell,
    first_order,
    search_cell_kernels_to_fused,
)
from tests.layer_test_utils import count_params

RTOL = 1e-12  # relative to the largest magnitude of the reference tensor
CELL_KINDS = {
    "normal": (False, False),
    "reduction": (True, False),
    "reduction_prev": (False, True),
}


def assert_close(expected, actual, name=""):
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert expected.shape == actual.shape, (name, expected.shape, actual.shape)
    scale = float(np.max(np.abs(expected)))
    assert scale > 0, name  # not trivially zero
    error = float(np.max(np.abs(expected - actual)))
    assert error <= RTOL * scale, (name, error, scale)


def make_cells(
    kind,
    partial_channels,
    steps=2,
    multiplier=None,
    primitives=PRIMITIVES,
    edge_primitives=None,
    channels=8,
    size=8,
    batch=2,
    seed=0,
):
    """A float64 SearchCell and a FusedSearchCell with the same kernels and K, plus inputs."""
    reduction, reduction_prev = CELL_KINDS[kind]
    c_prev_prev, c_prev = 6, 4
    multiplier = steps if multiplier is None else multiplier
    args = (c_prev_prev, c_prev, channels, reduction, reduction_prev, primitives, steps)
    kwargs = dict(
        multiplier=multiplier,
        edge_primitives=edge_primitives,
        partial_channels=partial_channels,
        dtype="float64",
    )
    height0 = 2 * size if reduction_prev else size
    shape0, shape1 = (batch, height0, height0, c_prev_prev), (batch, size, size, c_prev)
    reference = SearchCell(*args, **kwargs)
    reference.build(shape0, shape1)
    fused = FusedSearchCell(*args, **kwargs)
    fused.build(shape0, shape1)
    copy_weights_from_search_cell(fused, reference)
    rng = np.random.default_rng(seed)
    s0 = tf.constant(rng.normal(size=shape0))
    s1 = tf.constant(rng.normal(size=shape1))
    # Random positive mixing weights whose rows sum to 0.3 .. 0.8 or 1.5 .. 2 (never 1), so
    # the bypass channels' scaling by the row sum is checked; every entry matters distinctly.
    columns = len(primitives) if edge_primitives is None else len(edge_primitives[0])
    edges = genotype_lib.num_cell_edges(steps)
    weights = rng.uniform(0.1, 1.0, size=(edges, columns))
    row_sums = rng.uniform(0.3, 0.8, size=(edges, 1)) + 1.2 * (np.arange(edges)[:, None] % 2)
    weights = tf.constant(weights / np.sum(weights, axis=1, keepdims=True) * row_sums)
    return reference, fused, (s0, s1, weights)


def check_first_order(reference, fused, inputs, seed=1):
    """Outputs and gradients w.r.t. inputs, mixing weights and every kernel agree."""
    expected_shape = reference(*inputs).shape
    probe = tf.constant(np.random.default_rng(seed).normal(size=expected_shape))
    ref_out, ref_input_grads, ref_kernel_grads = first_order(reference, inputs, probe)
    out, input_grads, kernel_grads = first_order(fused, inputs, probe)
    assert_close(ref_out, out, "output")
    for name, a, b in zip(["s0", "s1", "weights"], ref_input_grads, input_grads):
        assert_close(a, b, name)
    mapped = search_cell_kernels_to_fused(fused, reference, ref_kernel_grads)
    assert len(mapped) == len(kernel_grads) == len(fused.kernels)
    for variable, a, b in zip(fused.kernels, mapped, kernel_grads):
        assert_close(a, b, variable.path)


@pytest.mark.parametrize("partial_channels", [2, 4])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_steps2_cell_matches_per_edge_cell(kind, partial_channels):
    reference, fused, inputs = make_cells(kind, partial_channels, steps=2, batch=3)
    assert fused.op_channels == reference.op_channels == 8 // partial_channels
    check_first_order(reference, fused, inputs)


@pytest.mark.parametrize("kind", ["normal", "reduction"])
def test_steps4_cell_matches_per_edge_cell(kind):
    reference, fused, inputs = make_cells(kind, 4, steps=4, multiplier=3, seed=2)
    check_first_order(reference, fused, inputs)


@pytest.mark.parametrize("grouping", ["exact", "pad"])
def test_depthwise_groupings_match_per_edge_cell(grouping, monkeypatch):
    monkeypatch.setattr(FusedSearchCell, "depthwise_grouping", grouping)
    reference, fused, inputs = make_cells("reduction", 2, steps=2, seed=3)
    check_first_order(reference, fused, inputs)


# steps=2 (5 edges), reference order: (0, 2), (1, 2), (0, 3), (1, 3), (2, 3). Columns in a
# different order per edge; sep_conv_5x5 on no edge, a stride-2 skip_connect on edges 0 and 3
# only, dil_conv_3x3 on one edge, 'none' on two.
EDGE_SUBSETS = (
    ("skip_connect", "sep_conv_3x3", "none"),
    ("max_pool_3x3", "dil_conv_5x5", "sep_conv_3x3"),
    ("none", "avg_pool_3x3", "dil_conv_3x3"),
    ("sep_conv_3x3", "skip_connect", "max_pool_3x3"),
    ("dil_conv_5x5", "skip_connect", "avg_pool_3x3"),
)


def random_subsets(seed, steps, n_ops=3):
    rng = np.random.default_rng(seed)
    edges = genotype_lib.num_cell_edges(steps)
    return tuple(
        tuple(str(p) for p in rng.choice(PRIMITIVES, n_ops, replace=False)) for _ in range(edges)
    )


@pytest.mark.parametrize(
    "kind,partial_channels,subsets",
    [
        ("normal", 2, "fixed"),
        ("reduction", 4, "fixed"),
        ("reduction_prev", 4, "fixed"),
        ("reduction", 2, "random"),
    ],
)
def test_edge_subsets_match_per_edge_cell(kind, partial_channels, subsets):
    steps = 2 if subsets == "fixed" else 4
    edge_primitives = EDGE_SUBSETS if subsets == "fixed" else random_subsets(7, steps)
    reference, fused, inputs = make_cells(
        kind, partial_channels, steps=steps, edge_primitives=edge_primitives, seed=4
    )
    assert fused.edge_ops == reference.edge_ops == edge_primitives
    if subsets == "fixed":
        assert "sep_conv_5x5" not in fused.conv_ops and not fused.dense_pointwise
        if kind == "reduction":
            assert sorted(fused.wave_order[j] for j in fused.reduce_skip_edges) == [0, 3]
    check_first_order(reference, fused, inputs)
    assert count_params(fused.kernels) == count_params(reference.kernels)


@pytest.mark.parametrize(
    "primitives,steps,multiplier",
    [
        (("none", "dil_conv_3x3", "skip_connect", "avg_pool_3x3"), 2, 2),
        (("sep_conv_5x5", "none", "max_pool_3x3"), 3, 2),
        (("skip_connect", "none"), 2, 1),
    ],
)
@pytest.mark.parametrize("kind", ["normal", "reduction"])
def test_primitive_subsets_with_none_match_per_edge_cell(kind, primitives, steps, multiplier):
    reference, fused, inputs = make_cells(
        kind, 4, steps=steps, multiplier=multiplier, primitives=primitives, seed=5
    )
    check_first_order(reference, fused, inputs)


def test_second_order_gradients_match():
    """d/d(weights, s0, s1) of the squared norm of the kernel gradient (a DARTS hypergradient
    term), K = 4 at a reduction cell (pooled bypass, FactorizedReduce on op channels)."""
    reference, fused, (s0, s1, weights) = make_cells("reduction", 4, steps=2, seed=6)

    def hyper(cell):
        with tf.GradientTape() as outer:
            outer.watch([weights, s0, s1])
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(tf.sin(cell(s0, s1, weights)))
            grads = inner.gradient(loss, cell.kernels)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return [norm] + outer.gradient(norm, [weights, s0, s1])

    for name, a, b in zip(["norm", "weights", "s0", "s1"], hyper(reference), hyper(fused)):
        assert_close(a, b, name)


@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_parameter_counts_match_per_edge_cell(kind):
    reduction, reduction_prev = CELL_KINDS[kind]
    shapes = ((2, 16 if reduction_prev else 8, 16 if reduction_prev else 8, 6), (2, 8, 8, 4))
    counts = {}
    for k in (1, 4):
        for cls in (SearchCell, FusedSearchCell):
            cell = cls(6, 4, 8, reduction, reduction_prev, partial_channels=k)
            cell.build(*shapes)
            counts[cls, k] = count_params(cell.kernels)
            assert count_params(cell.trainable_variables) == counts[cls, k]
            if cls is FusedSearchCell:
                pointwise = {v.name: tuple(v.shape) for v in cell.edge_kernels}["pointwise1"]
                assert pointwise[-2:] == (8 // k, 8 // k)  # ops on op channels
                assert len(cell.trainable_variables) <= 20
    assert counts[FusedSearchCell, 4] == counts[SearchCell, 4]
    assert counts[FusedSearchCell, 1] == counts[SearchCell, 1] > counts[SearchCell, 4]


def test_encoder_fused_matches_per_edge():
    """A whole PC-DARTS supernet body (normal and reduction cells, K = 4): parameter counts,
    features and gradients w.r.t. both cells' mixing weights agree."""
    kwargs = dict(channels=8, layers=3, partial_channels=4, dtype="float64")
    per_edge = SearchEncoder(**kwargs, cell_impl="per_edge")
    fused = SearchEncoder(**kwargs, cell_impl="fused")
    assert all(isinstance(cell, FusedSearchCell) for cell in fused.cells)
    assert all(cell.partial_channels == 4 for cell in fused.cells + per_edge.cells)
    rng = np.random.default_rng(8)
    images = tf.constant(rng.normal(size=(2, 8, 8, 3)))
    normal = tf.constant(rng.uniform(0.1, 0.6, size=(14, len(PRIMITIVES))))
    reduce = tf.constant(rng.uniform(0.1, 0.6, size=(14, len(PRIMITIVES))))
    per_edge.build(images.shape)
    fused.build(images.shape)
    assert count_params(fused.trainable_variables) == count_params(per_edge.trainable_variables)
    for name in ("stem_kernel", "stem_gamma", "stem_beta"):
        getattr(fused, name).assign(getattr(per_edge, name))
    for fused_cell, cell in zip(fused.cells, per_edge.cells):
        copy_weights_from_search_cell(fused_cell, cell)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([normal, reduce])
        expected = per_edge(images, normal, reduce)
        features = fused(images, normal, reduce)
        ref_loss = tf.reduce_sum(tf.square(expected))
        loss = tf.reduce_sum(tf.square(features))
    assert_close(expected, features, "features")
    ref_grads = tape.gradient(ref_loss, [normal, reduce])
    for name, a, b in zip(["normal", "reduce"], ref_grads, tape.gradient(loss, [normal, reduce])):
        assert_close(a, b, name)


def test_config_round_trip_keeps_partial_channels():
    cell = FusedSearchCell(6, 8, 8, True, False, steps=3, multiplier=2, partial_channels=4)
    reference = SearchCell(6, 8, 8, True, False, steps=3, multiplier=2, partial_channels=4)
    config = cell.get_config()
    assert config["partial_channels"] == 4 and set(config) == set(reference.get_config())
    assert cell.spec == reference.spec and cell.spec[-1] == 4
    restored = FusedSearchCell.from_config(config)
    assert restored.partial_channels == 4 and restored.op_channels == 2
    assert restored.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
    assert isinstance(restored, FusedSearchCell) and restored.get_config() == config
    default = FusedSearchCell(6, 8, 8, True, False, steps=3, multiplier=2)
    assert default.get_config()["partial_channels"] == 1


def test_partial_channels_one_is_the_darts_cell():
    """K = 1 given explicitly: the same kernels and bitwise the same output as the default."""
    _, default, inputs = make_cells("reduction", 1, steps=2)
    explicit = FusedSearchCell(
        6, 4, 8, True, False, steps=2, multiplier=2, partial_channels=1, dtype="float64"
    )
    explicit.build(inputs[0].shape, inputs[1].shape)
    assert [tuple(v.shape) for v in explicit.kernels] == [tuple(v.shape) for v in default.kernels]
    for variable, value in zip(explicit.kernels, default.kernels):
        variable.assign(value)
    np.testing.assert_array_equal(explicit(*inputs), default(*inputs))


def test_argument_checks():
    with pytest.raises(ValueError, match="partial_channels"):
        FusedSearchCell(6, 4, 8, False, False, partial_channels=3)
    for cls in (SearchCell, FusedSearchCell):  # a stride-2 FactorizedReduce on 3 channels
        with pytest.raises(ValueError, match=r"partial_channels=2 is invalid.*even.*got 3"):
            cls(6, 4, 6, True, False, steps=2, multiplier=2, partial_channels=2)
    odd = FusedSearchCell(6, 4, 8, True, False, steps=2, multiplier=2, partial_channels=2)
    with pytest.raises(ValueError, match=r"shape=\(2, 7, 7, 4\) is invalid.*even height and"):
        odd.build((2, 7, 7, 6), (2, 7, 7, 4))
    _, built, (_, _, weights) = make_cells("reduction", 2, steps=2)  # built for 8x8
    s0, s1 = tf.zeros((2, 7, 7, 6), tf.float64), tf.zeros((2, 7, 7, 4), tf.float64)
    with pytest.raises(ValueError, match=r"shape=\(2, 7, 7, 4\) is invalid.*even height and"):
        built(s0, s1, weights)
    # A normal cell has no pooled bypass: odd sizes are fine.
    normal = FusedSearchCell(
        6, 4, 8, False, False, steps=2, multiplier=2, partial_channels=2, dtype="float64"
    )
    assert normal(s0, s1, tf.ones((5, len(PRIMITIVES)), tf.float64)).shape == (2, 7, 7, 16)
