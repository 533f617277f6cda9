"""FusedSearchCell computes exactly SearchCell's function: outputs, first- and second-order
gradients (float64, kernels copied edge by edge), at cell and encoder level; plus parameter and
variable counts, config round trips and argument checks."""

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

TOL = 1e-9
CELL_KINDS = {
    "normal": (False, False),
    "reduction": (True, False),
    "reduction_prev": (False, True),
}


def max_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def make_cells(
    reduction,
    reduction_prev,
    channels=4,
    c_prev_prev=6,
    c_prev=8,
    primitives=PRIMITIVES,
    steps=4,
    multiplier=4,
    size=8,
    seed=0,
    edge_primitives=None,
):
    """A float64 SearchCell and a FusedSearchCell holding the same kernels, plus inputs."""
    args = (c_prev_prev, c_prev, channels, reduction, reduction_prev, primitives, steps, multiplier)
    args += (edge_primitives,)
    height0 = 2 * size if reduction_prev else size
    shape0, shape1 = (2, height0, height0, c_prev_prev), (2, size, size, c_prev)
    reference = SearchCell(*args, dtype="float64")
    reference.build(shape0, shape1)
    fused = FusedSearchCell(*args, dtype="float64")
    fused.build(shape0, shape1)
    copy_weights_from_search_cell(fused, reference)
    rng = np.random.default_rng(seed)
    s0 = tf.constant(rng.normal(size=shape0))
    s1 = tf.constant(rng.normal(size=shape1))
    # Arbitrary (not softmax-normalised) mixing weights: every entry matters distinctly.
    columns = len(primitives) if edge_primitives is None else len(edge_primitives[0])
    weights = tf.constant(rng.normal(size=(genotype_lib.num_cell_edges(steps), columns)))
    return reference, fused, (s0, s1, weights)


@pytest.mark.parametrize("grouping", ["small", "exact", "pad"])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_outputs_and_gradients_match_search_cell(kind, grouping, monkeypatch):
    monkeypatch.setattr(FusedSearchCell, "depthwise_grouping", grouping)
    reference, fused, inputs = make_cells(*CELL_KINDS[kind])
    expected = reference(*inputs)
    probe = tf.constant(np.random.default_rng(1).normal(size=expected.shape))
    ref_out, ref_input_grads, ref_kernel_grads = first_order(reference, inputs, probe)
    out, input_grads, kernel_grads = first_order(fused, inputs, probe)
    assert max_diff(ref_out, out) < TOL
    assert float(tf.reduce_max(tf.abs(ref_out))) > 0.1  # not trivially zero
    for name, a, b in zip(["s0", "s1", "weights"], ref_input_grads, input_grads):
        assert max_diff(a, b) < TOL, name
        assert float(tf.reduce_max(tf.abs(a))) > 0, name
    mapped = search_cell_kernels_to_fused(fused, reference, ref_kernel_grads)
    assert len(mapped) == len(kernel_grads)
    for variable, a, b in zip(fused.kernels, mapped, kernel_grads):
        assert max_diff(a, b) < TOL, variable.path


# Per-edge op subsets (P-DARTS): column order differs per edge; sep_conv_5x5 is on no edge,
# skip_connect on some wave-0 edges only, dil_conv_3x3 on one edge.
EDGE_SUBSETS = (
    ("skip_connect", "sep_conv_3x3"),
    ("sep_conv_3x3", "max_pool_3x3"),
    ("none", "dil_conv_5x5"),
    ("avg_pool_3x3", "skip_connect"),
    ("dil_conv_3x3", "sep_conv_3x3"),
    ("max_pool_3x3", "dil_conv_5x5"),
    ("sep_conv_3x3", "none"),
    ("skip_connect", "avg_pool_3x3"),
    ("dil_conv_5x5", "sep_conv_3x3"),
    ("none", "skip_connect"),
    ("sep_conv_3x3", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("sep_conv_3x3", "skip_connect"),
)


def random_subsets(seed, n_ops=3, steps=4):
    rng = np.random.default_rng(seed)
    edges = genotype_lib.num_cell_edges(steps)
    return tuple(
        tuple(str(p) for p in rng.choice(PRIMITIVES, n_ops, replace=False)) for _ in range(edges)
    )


@pytest.mark.parametrize("subsets", ["fixed", "random"])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_subset_cell_matches_per_edge_subset_cell(kind, subsets):
    edge_primitives = EDGE_SUBSETS if subsets == "fixed" else random_subsets(4)
    reference, fused, inputs = make_cells(*CELL_KINDS[kind], edge_primitives=edge_primitives)
    assert fused.edge_ops == reference.edge_ops == edge_primitives
    if subsets == "fixed":
        assert "sep_conv_5x5" not in fused.conv_ops
        assert not fused.dense_pointwise
        if kind == "reduction":  # wave-0 edges with skip_connect: reference edges 0, 3, 9
            assert sorted(fused.wave_order[j] for j in fused.reduce_skip_edges) == [0, 3, 9]
    probe = tf.constant(np.random.default_rng(5).normal(size=reference(*inputs).shape))
    ref_out, ref_input_grads, ref_kernel_grads = first_order(reference, inputs, probe)
    out, input_grads, kernel_grads = first_order(fused, inputs, probe)
    assert float(tf.reduce_max(tf.abs(ref_out))) > 0.1
    assert max_diff(ref_out, out) < TOL
    for name, a, b in zip(["s0", "s1", "weights"], ref_input_grads, input_grads):
        assert max_diff(a, b) < TOL, name
        assert float(tf.reduce_max(tf.abs(a))) > 0, name
    mapped = search_cell_kernels_to_fused(fused, reference, ref_kernel_grads)
    assert len(mapped) == len(kernel_grads)
    for variable, a, b in zip(fused.kernels, mapped, kernel_grads):
        assert max_diff(a, b) < TOL, variable.path
    assert count_params(fused.kernels) == count_params(reference.kernels)


@pytest.mark.parametrize(
    "kind,edge_primitives",
    [("reduction", None), ("reduction_prev", None), ("reduction", EDGE_SUBSETS)],
)
def test_second_order_gradients_match(kind, edge_primitives):
    """d/d(weights, s0) of the squared norm of the kernel gradient (a DARTS hypergradient term)."""
    reference, fused, (s0, s1, weights) = make_cells(
        *CELL_KINDS[kind], channels=2, size=4, edge_primitives=edge_primitives
    )

    def hyper(cell):
        with tf.GradientTape() as outer:
            outer.watch([weights, s0])
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(tf.sin(cell(s0, s1, weights)))
            grads = inner.gradient(loss, cell.kernels)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return [norm] + outer.gradient(norm, [weights, s0])

    for name, a, b in zip(["norm", "weights", "s0"], hyper(reference), hyper(fused)):
        scale = float(tf.reduce_max(tf.abs(a)))  # batch-stat BN on 2x2 maps: large values
        assert scale > 0, name
        assert max_diff(a, b) < TOL * max(1.0, scale), (name, max_diff(a, b), scale)


@pytest.mark.parametrize(
    "primitives,steps,multiplier",
    [
        (("dil_conv_5x5", "skip_connect", "none", "avg_pool_3x3", "sep_conv_5x5"), 3, 2),
        (("sep_conv_3x3", "none", "max_pool_3x3"), 2, 2),
        (("skip_connect", "dil_conv_3x3"), 3, 3),
        (("max_pool_3x3",), 2, 1),
        (("skip_connect", "none"), 2, 2),
    ],
)
@pytest.mark.parametrize("kind", ["normal", "reduction"])
def test_primitive_subsets_steps_and_multiplier(kind, primitives, steps, multiplier):
    reference, fused, inputs = make_cells(
        *CELL_KINDS[kind], primitives=primitives, steps=steps, multiplier=multiplier
    )
    probe = tf.constant(np.random.default_rng(2).normal(size=reference(*inputs).shape))
    ref_out, ref_input_grads, _ = first_order(reference, inputs, probe)
    out, input_grads, _ = first_order(fused, inputs, probe)
    assert max_diff(ref_out, out) < TOL
    for a, b in zip(ref_input_grads, input_grads):
        assert max_diff(a, b) < TOL


def test_forward_is_pure():
    reference, fused, inputs = make_cells(True, False, channels=2)
    expected = fused(*inputs)
    doubled = [2.0 * k for k in fused.kernels]
    ref_doubled = [2.0 * k for k in reference.kernels]
    # forward reads kernels from its argument only (stateless_call relies on it).
    assert max_diff(reference.forward(ref_doubled, *inputs), fused.forward(doubled, *inputs)) < TOL
    assert max_diff(fused.forward([k.value for k in fused.kernels], *inputs), expected) < 1e-12
    values, _ = fused.stateless_call([k.value for k in fused.trainable_variables], [], *inputs)
    assert max_diff(values, expected) < 1e-12


def test_encoder_fused_matches_per_edge():
    kwargs = dict(channels=2, layers=3, dtype="float64")
    per_edge = SearchEncoder(**kwargs, cell_impl="per_edge")
    fused = SearchEncoder(**kwargs, cell_impl="fused")
    assert all(isinstance(cell, FusedSearchCell) for cell in fused.cells)
    assert not any(isinstance(cell, FusedSearchCell) for cell in per_edge.cells)
    rng = np.random.default_rng(3)
    images = tf.constant(rng.normal(size=(2, 16, 16, 3)))
    normal = tf.nn.softmax(tf.constant(rng.normal(size=(14, len(PRIMITIVES)))))
    reduce = tf.nn.softmax(tf.constant(rng.normal(size=(14, len(PRIMITIVES)))))
    per_edge.build(images.shape)
    fused.build(images.shape)
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
    assert features.shape == (2, fused.output_channels)
    assert max_diff(expected, features) < TOL
    for a, b in zip(
        tape.gradient(ref_loss, [normal, reduce]), tape.gradient(loss, [normal, reduce])
    ):
        assert max_diff(a, b) < TOL
    config = fused.get_config()
    assert config["cell_impl"] == "fused" and per_edge.get_config()["cell_impl"] == "per_edge"
    restored = SearchEncoder.from_config(config)
    assert isinstance(restored.cells[0], FusedSearchCell)


def test_parameter_counts_match_and_variables_are_few():
    per_edge = SearchEncoder(channels=16, layers=8, cell_impl="per_edge")
    fused = SearchEncoder(channels=16, layers=8, cell_impl="fused")
    per_edge.build((2, 32, 32, 3))
    fused.build((2, 32, 32, 3))
    assert count_params(fused.trainable_variables) == count_params(per_edge.trainable_variables)
    for fused_cell, cell in zip(fused.cells, per_edge.cells):
        assert count_params(fused_cell.trainable_variables) == count_params(
            cell.trainable_variables
        )
        assert len(fused_cell.trainable_variables) == len(fused_cell.kernels) <= 20
        assert len(cell.trainable_variables) >= 8 * len(fused_cell.trainable_variables)
    assert not fused.non_trainable_variables


def test_initialisation_follows_per_edge_fan_in():
    _, fused, _ = make_cells(True, False, channels=8)
    values = {v.name: np.asarray(v) for v in fused.edge_kernels}
    for name, value in values.items():
        if "depthwise" in name:
            bound = 1.0 / (3 if "3x3" in name else 5)  # fan-in k * k
        else:
            bound = 1.0 / np.sqrt(8)  # pointwise / FactorizedReduce: fan-in C
        assert np.max(np.abs(value)) <= bound, name
        assert np.max(np.abs(value)) > 0.8 * bound, name  # uniform over the full range
    # One initialiser instance per variable: same-shaped kernels hold different values.
    assert max_diff(values["sep_conv_3x3_depthwise1"], values["sep_conv_3x3_depthwise2"]) > 0
    assert max_diff(values["sep_conv_3x3_depthwise1"], values["dil_conv_3x3_depthwise1"]) > 0


def test_config_round_trip_and_same_keys_as_search_cell():
    cell = FusedSearchCell(6, 8, 4, True, False, steps=3, multiplier=2, name="fused")
    reference = SearchCell(6, 8, 4, True, False, steps=3, multiplier=2, name="fused")
    config = cell.get_config()
    assert set(config) == set(reference.get_config())
    assert FusedSearchCell.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
    assert isinstance(restored, FusedSearchCell) and restored.get_config() == config


def test_argument_checks():
    with pytest.raises(ValueError, match="'grouped'"):
        SearchEncoder(channels=2, layers=3, cell_impl="grouped")
    with pytest.raises(ValueError, match="multiplier"):
        FusedSearchCell(4, 4, 4, False, False, steps=2, multiplier=3)
    with pytest.raises(ValueError, match=r"primitives=.*sep_conv_7x7.*is invalid.*unknown"):
        FusedSearchCell(4, 4, 4, False, False, primitives=("sep_conv_7x7",))
    with pytest.raises(ValueError, match="none"):
        FusedSearchCell(4, 4, 4, False, False, primitives=("none",))
    _, fused, (_, _, weights) = make_cells(True, False, channels=2)
    odd = tf.zeros((2, 7, 7, 6), tf.float64)
    with pytest.raises(ValueError, match="even spatial size"):
        fused(odd, tf.zeros((2, 7, 7, 8), tf.float64), weights)
    reference, _, _ = make_cells(False, False, channels=2)
    with pytest.raises(ValueError, match="specs differ"):
        copy_weights_from_search_cell(fused, reference)
