"""Tests for ilnas_tf.network: parameter counts against the reference architecture, forward
shapes, cell wiring, drop path, the auxiliary loss in ``fit``, config and ``.keras`` round
trips, and argument validation.

Parameter counts are derived here, independently of the library, from the layer rules of
quark0/darts ``cnn/model.py`` / ``cnn/operations.py`` (PyTorch modules: conv weights without
bias, BN weight and bias, Linear weight and bias; BN running statistics are buffers, not
parameters). Full-size networks are only built, never run; forward passes use tiny configs.
"""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import network, ops
from ilnas_tf.genotype import Genotype

NAMES = ["DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS", "PRDARTS"]
CONCAT = [2, 3, 4, 5]


# ----------------------------------------------------------------------------- reference counter


def bn(c):
    return 2 * c  # BatchNorm2d(affine=True): weight + bias


def relu_conv_bn(c_in, c_out, k=1):
    return k * k * c_in * c_out + bn(c_out)


def factorized_reduce(c_in, c_out):
    return 2 * c_in * (c_out // 2) + bn(c_out)


def sep_conv(c, k):
    return 2 * (k * k * c + c * c + bn(c))


def dil_conv(c, k):
    return k * k * c + c * c + bn(c)


def op_params(name, c, stride):
    table = {
        "max_pool_3x3": 0,
        "avg_pool_3x3": 0,
        "skip_connect": 0 if stride == 1 else factorized_reduce(c, c),
        "sep_conv_3x3": sep_conv(c, 3),
        "sep_conv_5x5": sep_conv(c, 5),
        "dil_conv_3x3": dil_conv(c, 3),
        "dil_conv_5x5": dil_conv(c, 5),
    }
    return table[name]


def linear(c_in, c_out):
    return c_in * c_out + c_out


def cells_params(genotype, c_prev_prev, c_prev, c_curr, layers, reduction_prev):
    """Parameters of all cells; also the final channels and the auxiliary head's input."""
    total, c_aux = 0, None
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        entries = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        if reduction_prev:
            total += factorized_reduce(c_prev_prev, c_curr)
        else:
            total += relu_conv_bn(c_prev_prev, c_curr)
        total += relu_conv_bn(c_prev, c_curr)
        for name, index in entries:
            total += op_params(name, c_curr, 2 if reduction and index < 2 else 1)
        reduction_prev = reduction
        c_prev_prev, c_prev = c_prev, len(concat) * c_curr
        if i == 2 * layers // 3:
            c_aux = c_prev
    return total, c_prev, c_aux


def aux_params(c_in, classes, second_bn):
    return (
        relu_conv_bn(c_in, 128)  # conv1x1 + BN
        + 2 * 2 * 128 * 768
        + (bn(768) if second_bn else 0)
        + linear(768, classes)
    )


def expected_cifar(genotype, c=36, classes=10, layers=20):
    """(param size without the auxiliary head, auxiliary head parameters)."""
    stem = relu_conv_bn(3, 3 * c, k=3)
    cells, c_prev, c_aux = cells_params(genotype, 3 * c, 3 * c, c, layers, False)
    return stem + cells + linear(c_prev, classes), aux_params(c_aux, classes, True)


def expected_imagenet(genotype, c=48, classes=1000, layers=14):
    stem0 = relu_conv_bn(3, c // 2, k=3) + relu_conv_bn(c // 2, c, k=3)
    stem1 = relu_conv_bn(c, c, k=3)
    cells, c_prev, c_aux = cells_params(genotype, c, c, c, layers, True)
    return stem0 + stem1 + cells + linear(c_prev, classes), aux_params(c_aux, classes, False)


def total_trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", NAMES)
def test_cifar_parameter_count_matches_reference(name):
    genotype = genotype_lib.NAMED_GENOTYPES[name]
    model = network.NetworkCIFAR(36, 10, 20, auxiliary=True, genotype=genotype)
    model.build((None, 32, 32, 3))
    main, aux = expected_cifar(genotype)
    assert network.count_parameters(model) == main
    assert network.count_parameters(model, exclude=None) == main + aux == total_trainable(model)


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_parameter_count_matches_reference(name):
    genotype = genotype_lib.NAMED_GENOTYPES[name]
    model = network.NetworkImageNet(48, 1000, 14, auxiliary=True, genotype=genotype)
    model.build((None, 224, 224, 3))
    main, aux = expected_imagenet(genotype)
    assert network.count_parameters(model) == main
    assert network.count_parameters(model, exclude=None) == main + aux == total_trainable(model)


def test_published_darts_v2_param_sizes():
    """quark0/darts logs "param size = 3.349342MB" (CIFAR) and "4.718752MB" (ImageNet)."""
    assert expected_cifar(genotype_lib.DARTS_V2)[0] == 3_349_342
    assert expected_imagenet(genotype_lib.DARTS_V2)[0] == 4_718_752
    # The models match the counter for every genotype (tests above); the defaults are the
    # paper's settings.
    config = network.NetworkCIFAR().get_config()
    assert (config["channels"], config["layers"], config["num_classes"]) == (36, 20, 10)
    assert config["genotype"] == genotype_lib.DARTS_V2.to_dict() and config["auxiliary"]
    config = network.NetworkImageNet().get_config()
    assert (config["channels"], config["layers"], config["num_classes"]) == (48, 14, 1000)


def test_count_parameters_uses_paths_relative_to_the_model():
    default = tiny_cifar()
    named = tiny_cifar(name="auxiliary_net")
    for model in (default, named):
        model.build((None, 32, 32, 3))
    assert network.count_parameters(named) == network.count_parameters(default)
    assert network.count_parameters(named) == expected_cifar(genotype_lib.DARTS_V2, 4, 10, 5)[0]
    with pytest.raises(ValueError, match="not built"):
        network.count_parameters(tiny_cifar())


# ----------------------------------------------------------------------------- forward passes


def tiny_cifar(**kwargs):
    kwargs.setdefault("genotype", genotype_lib.DARTS_V2)
    kwargs.setdefault("seed", 0)
    return network.NetworkCIFAR(4, 10, 5, **kwargs)


def images(batch=2, size=32, seed=0):
    return tf.constant(
        np.random.default_rng(seed).standard_normal((batch, size, size, 3)), "float32"
    )


def test_cifar_forward_shapes_and_auxiliary_only_in_training():
    model = tiny_cifar(auxiliary=True)
    x = images()
    logits, aux_logits = model(x, training=True)
    assert logits.shape == (2, 10) and aux_logits.shape == (2, 10)
    assert model(x, training=False).shape == (2, 10)
    assert model(x).shape == (2, 10)
    plain = tiny_cifar(auxiliary=False)
    assert plain(x, training=True).shape == (2, 10)
    assert plain.auxiliary_head is None


def test_cell_channels_and_reductions_follow_the_reference():
    model = tiny_cifar()
    assert model.reductions == (1, 3) and model.auxiliary_index == 3
    reductions = [cell.reduction for cell in model.cells]
    assert reductions == [False, True, False, True, False]
    assert [cell.reduction_prev for cell in model.cells] == [False] + reductions[:-1]
    assert [cell.channels for cell in model.cells] == [4, 8, 8, 16, 16]
    assert [(cell.c_prev_prev, cell.c_prev) for cell in model.cells] == [
        (12, 12), (12, 16), (16, 32), (32, 32), (32, 64),
    ]  # fmt: skip
    reduce_cell = model.cells[1]
    strides = [op.stride for op in reduce_cell.edge_ops]
    assert strides == [2 if index < 2 else 1 for _, index in genotype_lib.DARTS_V2.reduce]
    assert isinstance(reduce_cell.preprocess0, ops.ReLUConvBN)
    assert isinstance(model.cells[2].preprocess0, ops.FactorizedReduce)


def test_imagenet_forward_shapes():
    # 224x224 -> stem 56 (s0) / 28 (s1) -> reductions at cells 1 and 2 -> 7x7 at the head.
    model = network.NetworkImageNet(8, 7, 3, auxiliary=True, seed=0)
    x = images(batch=2, size=224)
    logits, aux_logits = model(x, training=True)
    assert logits.shape == (2, 7) and aux_logits.shape == (2, 7)
    assert model(x, training=False).shape == (2, 7)
    assert model.cells[0].reduction_prev
    assert isinstance(model.cells[0].preprocess0, ops.FactorizedReduce)


def test_imagenet_stem_pads_symmetrically_like_pytorch():
    model = network.NetworkImageNet(8, 7, 3, auxiliary=False)
    x = images(batch=1, size=16)
    model(x, training=False)
    stem = model.stem0_conv1
    kernel = stem.kernels[0].numpy()
    # Plain numpy conv: zero padding 1 on every side, stride 2 (PyTorch).
    padded = np.pad(x.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 8, 8, 4), np.float32)
    for i in range(8):
        for j in range(8):
            window = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[:, i, j, :] = np.einsum("nhwc,hwcd->nd", window, kernel)
    norm = stem.norms[0]
    scale = norm.gamma.numpy() / np.sqrt(norm.moving_variance.numpy() + ops.BN_EPSILON)
    expected = (expected - norm.moving_mean.numpy()) * scale + norm.beta.numpy()
    actual = stem(x, training=False).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- cell wiring


def skip_genotype(normal, normal_concat=CONCAT):
    return Genotype(
        normal=normal,
        normal_concat=normal_concat,
        reduce=genotype_lib.DARTS_V2.reduce,
        reduce_concat=CONCAT,
    )


def test_cell_sums_node_inputs_and_concatenates_the_concat_states():
    # Identity ops only, so the cell is pure wiring on top of the preprocessed inputs.
    genotype = skip_genotype(
        [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0),
         ("skip_connect", 3), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 4)],
        normal_concat=[5, 3, 2],
    )  # fmt: skip
    cell = network.Cell(genotype, 6, 5, 4, reduction=False, reduction_prev=False)
    s0, s1 = tf.random.normal([2, 8, 8, 6], seed=1), tf.random.normal([2, 8, 8, 5], seed=2)
    out = cell(s0, s1, training=False).numpy()
    p0 = cell.preprocess0(s0, training=False).numpy()
    p1 = cell.preprocess1(s1, training=False).numpy()
    s2 = p0 + p1
    s3 = s2 + p0
    s4 = s3 + p1
    s5 = s2 + s4
    assert cell.multiplier == 3 and cell.output_channels == 12
    np.testing.assert_allclose(out, np.concatenate([s5, s3, s2], axis=-1), rtol=1e-6, atol=1e-6)


def test_reduction_cell_shapes_and_compute_output_shape():
    cell = network.Cell(genotype_lib.PDARTS, 8, 16, 4, reduction=True, reduction_prev=True)
    s0, s1 = tf.random.normal([2, 16, 16, 8]), tf.random.normal([2, 8, 8, 16])
    out = cell(s0, s1, training=False)
    assert out.shape == (2, 4, 4, 16)
    assert cell.compute_output_shape(s0.shape, s1.shape) == (2, 4, 4, 16)


# ----------------------------------------------------------------------------- drop path


def test_drop_path_function_zeroes_or_rescales_whole_examples():
    x = tf.ones([2000, 2, 2, 3])
    y = network.drop_path(x, 0.25, seed=keras.random.SeedGenerator(1)).numpy()
    per_example = y.reshape(2000, -1)
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # one draw per example
    values = np.unique(per_example[:, 0])
    np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-6)
    assert 0.7 < np.mean(per_example[:, 0] > 0) < 0.8
    np.testing.assert_array_equal(network.drop_path(x, tf.constant(0.0)).numpy(), x.numpy())


def test_training_output_is_deterministic_without_drop_path():
    model = tiny_cifar(auxiliary=False)
    x = images()
    np.testing.assert_array_equal(model(x, training=True).numpy(), model(x, training=True).numpy())


def test_drop_path_leaves_identity_ops_untouched():
    genotype = skip_genotype([("skip_connect", 0), ("skip_connect", 1)] * 4)
    cell = network.Cell(genotype, 4, 4, 4, reduction=False, reduction_prev=False, seed=0)
    s = tf.random.normal([8, 8, 8, 4], seed=3)
    plain = cell(s, s, 0.0, training=True).numpy()
    for rate in (0.5, tf.constant(0.5)):
        np.testing.assert_array_equal(cell(s, s, rate, training=True).numpy(), plain)


def test_drop_path_changes_other_ops_in_training_only():
    cell = network.Cell(
        genotype_lib.DARTS_V2, 4, 4, 4, reduction=False, reduction_prev=False, seed=0
    )
    s = tf.random.normal([8, 8, 8, 4], seed=4)
    plain = cell(s, s, 0.0, training=True).numpy()
    dropped = cell(s, s, 0.5, training=True).numpy()
    assert np.abs(dropped - plain).max() > 1e-3
    np.testing.assert_array_equal(
        cell(s, s, 0.5, training=False).numpy(), cell(s, s, 0.0, training=False).numpy()
    )
    # A tensor rate of 0 is exactly no drop path.
    np.testing.assert_array_equal(cell(s, s, tf.constant(0.0), training=True).numpy(), plain)


def test_drop_path_is_seeded():
    def run():
        cell = network.Cell(
            genotype_lib.DARTS_V2, 4, 4, 4, reduction=False, reduction_prev=False, seed=7
        )
        s = tf.constant(np.random.default_rng(5).standard_normal((8, 4, 4, 4)), "float32")
        cell.build(s.shape, s.shape)
        for variable in cell.trainable_variables:
            variable.assign(np.full(variable.shape, 0.1, "float32"))
        return cell(s, s, 0.5, training=True).numpy()

    np.testing.assert_array_equal(run(), run())


def test_drop_path_rate_tensor_changes_without_retracing():
    cell = network.Cell(
        genotype_lib.DARTS_V2, 4, 4, 4, reduction=False, reduction_prev=False, seed=0
    )
    rate = keras.Variable(0.0, trainable=False)
    s = tf.random.normal([8, 4, 4, 4], seed=6)
    cell(s, s, training=False)  # build outside the tf.function

    @tf.function
    def forward():
        return cell(s, s, rate.value, training=True)

    plain = forward().numpy()
    rate.assign(0.5)
    dropped = forward().numpy()
    assert np.abs(dropped - plain).max() > 1e-3
    assert forward.experimental_get_tracing_count() == 1


def test_network_drop_path_rate_variable_is_assigned_in_place():
    model = tiny_cifar(drop_path_rate=0.1)
    variable = model.drop_path_rate
    assert isinstance(variable, keras.Variable) and not variable.trainable
    model.drop_path_rate = 0.3
    assert model.drop_path_rate is variable
    np.testing.assert_allclose(float(variable.numpy()), 0.3, rtol=1e-6)
    model.set_drop_path_rate(0.2)
    np.testing.assert_allclose(model.get_config()["drop_path_rate"], 0.2, rtol=1e-6)
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="drop_path_rate"):
            model.drop_path_rate = bad
    assert model.drop_path_rate is variable


# ----------------------------------------------------------------------------- training loop


def test_compute_loss_adds_the_weighted_auxiliary_loss():
    model = tiny_cifar(auxiliary=True, auxiliary_weight=0.4)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss_fn, metrics=["accuracy"])
    x, y = images(4), np.array([0, 1, 2, 3])
    logits, aux_logits = model(x, training=True)
    loss = model.compute_loss(x, y, (logits, aux_logits))
    expected = loss_fn(y, logits) + 0.4 * loss_fn(y, aux_logits)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    np.testing.assert_allclose(
        float(model.compute_loss(x, y, logits)), float(loss_fn(y, logits)), rtol=1e-6
    )


def test_fit_trains_with_auxiliary_head_and_drop_path_without_retracing(monkeypatch):
    traces = []
    original_call = network.NetworkCIFAR.call

    @functools.wraps(original_call)
    def counting_call(self, images, training=None):
        traces.append(training)  # runs once per trace of a compiled step
        return original_call(self, images, training=training)

    monkeypatch.setattr(network.NetworkCIFAR, "call", counting_call)
    model = network.NetworkCIFAR(2, 3, 3, auxiliary=True, drop_path_rate=0.2, seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = images(4), np.array([0, 1, 2, 0])
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    assert True in traces
    traced = len(traces)
    aux_kernel = model.auxiliary_head.conv1.kernel.numpy().copy()
    model.drop_path_rate = 0.1  # the per-epoch schedule
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert len(traces) == traced  # the new rate is read from the variable: no retracing
    assert np.abs(model.auxiliary_head.conv1.kernel.numpy() - aux_kernel).max() > 0
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}


# ----------------------------------------------------------------------------- auxiliary heads


def test_auxiliary_heads():
    x = tf.random.normal([2, 8, 8, 12])
    head = network.AuxiliaryHeadCIFAR(5)
    assert head(x, training=False).shape == (2, 5)
    assert total_trainable(head) == aux_params(12, 5, second_bn=True)
    imagenet = network.AuxiliaryHeadImageNet(5)
    assert imagenet(tf.random.normal([2, 7, 7, 12]), training=True).shape == (2, 5)
    assert total_trainable(imagenet) == aux_params(12, 5, second_bn=False)
    assert imagenet.norm2 is None  # the reference's missing BN after the 2x2 conv
    with pytest.raises(ValueError, match="16, 16"):
        network.AuxiliaryHeadCIFAR(5).build((None, 16, 16, 12))
    with pytest.raises(ValueError, match="14, 14"):
        network.AuxiliaryHeadImageNet(5).build((None, 14, 14, 12))


# ----------------------------------------------------------------------------- serialisation


def assert_config_round_trip(obj):
    config = obj.get_config()
    json.dumps(config)
    assert type(obj).from_config(config).get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(obj)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(obj) and revived.get_config() == config
    return config


def test_config_round_trips():
    cell = network.Cell(genotype_lib.PDARTS, 8, 16, 4, True, True, seed=3, name="c")
    config = assert_config_round_trip(cell)
    assert config["genotype"] == genotype_lib.PDARTS.to_dict()
    assert network.Cell.from_config(config).genotype == genotype_lib.PDARTS
    assert_config_round_trip(network.AuxiliaryHeadCIFAR(7))
    assert_config_round_trip(network.AuxiliaryHeadImageNet(7))
    config = assert_config_round_trip(
        network.NetworkCIFAR(4, 10, 5, genotype=genotype_lib.PRDARTS, auxiliary_weight=0.3)
    )
    assert config["genotype"] == genotype_lib.PRDARTS.to_dict() and config["layers"] == 5
    assert_config_round_trip(network.NetworkImageNet(8, 7, 3, auxiliary=False, seed=1))


def test_keras_file_round_trip(tmp_path):
    model = tiny_cifar(auxiliary=True, genotype=genotype_lib.PC_DARTS, drop_path_rate=0.1)
    x = images()
    model(x, training=True)  # moves the BN statistics away from their initial values
    expected = model(x, training=False).numpy()
    path = str(tmp_path / "network.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is network.NetworkCIFAR
    assert loaded.genotype == genotype_lib.PC_DARTS
    np.testing.assert_allclose(float(loaded.drop_path_rate.numpy()), 0.1, rtol=1e-6)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, atol=1e-5)
    assert network.count_parameters(loaded) == network.count_parameters(model)
    assert len(loaded(x, training=True)) == 2


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"layers": 2}, r"layers=2 is invalid: expected an integer >= 3"),
        ({"channels": 0}, r"channels=0 is invalid: expected an integer >= 1"),
        ({"num_classes": -1}, "num_classes.*-1"),
        ({"genotype": 42}, "int 42"),
        ({"genotype": "NOT_A_GENOTYPE"}, "NOT_A_GENOTYPE"),
        ({"drop_path_rate": 1.5}, "drop_path_rate.*1.5"),
        ({"auxiliary_weight": -1.0}, "auxiliary_weight.*-1.0"),
        ({"seed": -3}, "seed.*-3"),
    ],
)
def test_bad_network_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        network.NetworkCIFAR(**{"channels": 4, "layers": 5, **kwargs})


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="even channels, got 7"):
        network.NetworkImageNet(channels=7)
    with pytest.raises(ValueError, match="even c_out, got 5"):  # FactorizedReduce(8, 5)
        network.Cell(genotype_lib.DARTS_V2, 8, 8, 5, reduction=False, reduction_prev=True)
    with pytest.raises(ValueError, match="c_prev"):
        network.Cell(genotype_lib.DARTS_V2, 8, 0, 4, reduction=False, reduction_prev=False)
    cell = network.Cell(genotype_lib.DARTS_V2, 4, 4, 4, reduction=False, reduction_prev=False)
    s = tf.zeros([2, 4, 4, 4])
    with pytest.raises(ValueError, match="drop_path_rate.*1.0"):
        cell(s, s, 1.0, training=True)
    with pytest.raises(ValueError, match=r"\(None, 32, 32, 1\)"):
        tiny_cifar().build((None, 32, 32, 1))
    with pytest.raises(ValueError, match="list"):
        network.resolve_genotype(["not", "a", "genotype"])
    assert network.resolve_genotype("DARTS_V1") is genotype_lib.DARTS_V1
    assert network.resolve_genotype(str(genotype_lib.PDARTS)) == genotype_lib.PDARTS
