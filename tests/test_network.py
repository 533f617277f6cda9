"""Evaluation networks: reference parameter counts, shapes, drop path, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import network


# ----------------------------------------------------------------- independent counter
def _op_params(name, c, stride):
    """Trainable parameters of one affine op (PyTorch modules: conv weights + BN gamma/beta)."""
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return 0
    if name == "skip_connect":
        return 0 if stride == 1 else 2 * (c * (c // 2)) + 2 * c  # FactorizedReduce
    k = int(name[-1])
    if name.startswith("sep_conv"):
        return 2 * (k * k * c + c * c + 2 * c)
    if name.startswith("dil_conv"):
        return k * k * c + c * c + 2 * c
    raise AssertionError(name)


def _relu_conv_bn(c_in, c_out):
    return c_in * c_out + 2 * c_out


def _factorized_reduce(c_in, c_out):
    return 2 * c_in * (c_out // 2) + 2 * c_out


def _cells(genotype, c_prev_prev, c_prev, c_curr, layers, reduction_prev):
    total, aux_channels = 0, None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        entries = genotype.reduce if reduction else genotype.normal
        total += (
            _factorized_reduce(c_prev_prev, c_curr)
            if reduction_prev
            else _relu_conv_bn(c_prev_prev, c_curr)
        )
        total += _relu_conv_bn(c_prev, c_curr)
        for name, index in entries:
            total += _op_params(name, c_curr, 2 if reduction and index < 2 else 1)
        reduction_prev = reduction
        c_prev_prev, c_prev = c_prev, 4 * c_curr
        if i == 2 * layers // 3:
            aux_channels = c_prev
    return total, c_prev, aux_channels


def expected_cifar(genotype, c=36, classes=10, layers=20):
    stem = 3 * 3 * 3 * 3 * c + 2 * 3 * c
    cells, c_prev, _ = _cells(genotype, 3 * c, 3 * c, c, layers, False)
    return stem + cells + c_prev * classes + classes


def expected_imagenet(genotype, c=48, classes=1000, layers=14):
    stem0 = 3 * 3 * 3 * (c // 2) + 2 * (c // 2) + 3 * 3 * (c // 2) * c + 2 * c
    stem1 = 3 * 3 * c * c + 2 * c
    cells, c_prev, _ = _cells(genotype, c, c, c, layers, True)
    return stem0 + stem1 + cells + c_prev * classes + classes


NAMES = ["DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS", "PRDARTS"]


@pytest.mark.parametrize("name", NAMES)
def test_cifar_parameter_count_matches_reference_rules(name):
    genotype = genotype_lib.get_genotype(name)
    model = network.NetworkCIFAR(36, 10, 20, True, genotype)
    model.build((None, 32, 32, 3))
    assert network.count_parameters(model) == expected_cifar(genotype)
    # The auxiliary head exists and is excluded, as in the reference's "param size".
    assert network.count_parameters(model, exclude=None) > network.count_parameters(model)


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_parameter_count_matches_reference_rules(name):
    genotype = genotype_lib.get_genotype(name)
    model = network.NetworkImageNet(48, 1000, 14, True, genotype)
    model.build((None, 224, 224, 3))
    assert network.count_parameters(model) == expected_imagenet(genotype)


def test_published_darts_v2_parameter_sizes():
    """quark0/darts logs "param size = 3.349342MB" (CIFAR) and "4.718752MB" (ImageNet)."""
    assert expected_cifar(genotype_lib.DARTS_V2) == 3_349_342
    assert expected_imagenet(genotype_lib.DARTS_V2) == 4_718_752


# ----------------------------------------------------------------- behaviour
def _tiny(**kwargs):
    kwargs.setdefault("genotype", genotype_lib.DARTS_V2)
    return network.NetworkCIFAR(4, 10, 5, **kwargs)


def test_forward_shapes_and_auxiliary_logits_only_in_training():
    model = _tiny(auxiliary=True)
    images = tf.random.normal([2, 32, 32, 3])
    logits, aux = model(images, training=True)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    assert model(images, training=False).shape == (2, 10)
    assert _tiny(auxiliary=False)(images, training=True).shape == (2, 10)


def test_imagenet_forward_shape():
    model = network.NetworkImageNet(8, 7, 3, auxiliary=False)
    assert model(tf.random.normal([2, 64, 64, 3]), training=False).shape == (2, 7)


def _cell(genotype, rate):
    cell = network.Cell(genotype, 4, 4, 4, reduction=False, reduction_prev=False)
    s = tf.random.normal([8, 8, 8, 4], seed=1)
    first = cell(s, s, drop_path_rate=rate, training=True)
    return cell, s, first


def test_drop_path_leaves_identity_ops_alone():
    skip_only = genotype_lib.Genotype(
        normal=[("skip_connect", 0), ("skip_connect", 1)] * 4,
        normal_concat=[2, 3, 4, 5],
        reduce=genotype_lib.DARTS_V2.reduce,
        reduce_concat=[2, 3, 4, 5],
    )
    cell, s, with_drop = _cell(skip_only, 0.5)
    without = cell(s, s, drop_path_rate=0.0, training=True)
    np.testing.assert_allclose(with_drop.numpy(), without.numpy(), rtol=1e-6, atol=1e-6)


def test_drop_path_changes_other_ops_and_only_in_training():
    cell, s, dropped = _cell(genotype_lib.DARTS_V2, 0.5)
    plain = cell(s, s, drop_path_rate=0.0, training=True)
    assert float(tf.reduce_max(tf.abs(dropped - plain))) > 1e-3
    inference_a = cell(s, s, drop_path_rate=0.5, training=False)
    inference_b = cell(s, s, drop_path_rate=0.0, training=False)
    np.testing.assert_array_equal(inference_a.numpy(), inference_b.numpy())
    # Drop path zeroes whole examples: at rate 0.99 an example loses all 8 ops with
    # probability 0.92, so some example's output is exactly zero (miss chance ~1e-9).
    no_skip = genotype_lib.Genotype(
        normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1)] * 4,
        normal_concat=[2, 3, 4, 5],
        reduce=genotype_lib.DARTS_V2.reduce,
        reduce_concat=[2, 3, 4, 5],
    )
    _, _, mostly_dropped = _cell(no_skip, 0.99)
    per_example = tf.reduce_max(tf.abs(mostly_dropped), axis=[1, 2, 3]).numpy()
    assert (per_example == 0).any() and (per_example >= 0).all()


def test_config_and_keras_file_round_trip(tmp_path):
    model = _tiny(auxiliary=True, genotype=genotype_lib.PC_DARTS, drop_path_rate=0.1)
    images = tf.random.normal([2, 32, 32, 3])
    expected = model(images, training=False)
    config = model.get_config()
    assert network.NetworkCIFAR.from_config(config).get_config() == config
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.genotype == genotype_lib.PC_DARTS
    np.testing.assert_allclose(loaded(images, training=False).numpy(), expected.numpy(), atol=1e-5)


def test_cell_config_round_trip():
    cell = network.Cell(genotype_lib.PDARTS, 8, 16, 4, reduction=True, reduction_prev=True)
    config = cell.get_config()
    assert network.Cell.from_config(config).get_config() == config
    s0 = tf.random.normal([2, 16, 16, 8])
    s1 = tf.random.normal([2, 8, 8, 16])
    assert cell(s0, s1, drop_path_rate=0.0, training=False).shape == (2, 4, 4, 16)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"layers": 2}, "layers must be >= 3"),
        ({"channels": 0}, "channels"),
        ({"genotype": 42}, "int"),
        ({"genotype": "NOT_A_GENOTYPE"}, "NOT_A_GENOTYPE"),
        ({"drop_path_rate": 1.5}, "1.5"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        network.NetworkCIFAR(**{"channels": 4, "layers": 5, **kwargs})


def test_imagenet_rejects_odd_channels():
    with pytest.raises(ValueError, match="even channels"):
        network.NetworkImageNet(channels=7)
