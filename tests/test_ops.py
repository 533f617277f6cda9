"""Tests for ilnas_tf.ops: shapes, configs, parameter counts, and numerics against independent
loop-based numpy references with PyTorch (quark0/darts) semantics."""

import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import ops
from ilnas_tf.genotype import PRIMITIVES
from tests.layer_test_utils import count_params, run_layer_test

EPS = 1e-5
C = 4


# ----------------------------------------------------------------------------- numpy references
# NHWC, loop based, written from the PyTorch definitions (not from ilnas_tf.ops).


def np_relu(x):
    return np.maximum(x, 0.0)


def np_pad(x, pad, value=0.0):
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=value)


def out_size(size, kernel, stride, pad, dilation=1):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def np_max_pool(x, kernel, stride, pad):
    """nn.MaxPool2d(kernel, stride, pad): padding is -inf (never selected)."""
    n, h, w, c = x.shape
    xp = np_pad(x, pad, -np.inf)
    oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, i * stride : i * stride + kernel, j * stride : j * stride + kernel, :]
            out[:, i, j, :] = window.max(axis=(1, 2))
    return out


def np_avg_pool(x, kernel, stride, pad):
    """nn.AvgPool2d(kernel, stride, pad, count_include_pad=False)."""
    n, h, w, c = x.shape
    oh, ow = out_size(h, kernel, stride, pad), out_size(w, kernel, stride, pad)
    out = np.zeros((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            total, count = np.zeros((n, c), x.dtype), 0
            for di in range(kernel):
                for dj in range(kernel):
                    r, s = i * stride - pad + di, j * stride - pad + dj
                    if 0 <= r < h and 0 <= s < w:
                        total += x[:, r, s, :]
                        count += 1
            out[:, i, j, :] = total / count
    return out


def np_depthwise_conv(x, kernel, stride, pad, dilation=1):
    """nn.Conv2d(C, C, k, stride, pad, dilation, groups=C, bias=False); kernel [k, k, C, 1]."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    xp = np_pad(x, pad)
    oh, ow = out_size(h, k, stride, pad, dilation), out_size(w, k, stride, pad, dilation)
    out = np.zeros((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            for di in range(k):
                for dj in range(k):
                    r, s = i * stride + di * dilation, j * stride + dj * dilation
                    out[:, i, j, :] += xp[:, r, s, :] * kernel[di, dj, :, 0]
    return out


def np_conv(x, kernel, stride=1, pad=0):
    """nn.Conv2d(Cin, Cout, k, stride, pad, bias=False); kernel [k, k, Cin, Cout]."""
    n, h, w, _ = x.shape
    k, cout = kernel.shape[0], kernel.shape[3]
    xp = np_pad(x, pad)
    oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    out = np.zeros((n, oh, ow, cout), x.dtype)
    for i in range(oh):
        for j in range(ow):
            for di in range(k):
                for dj in range(k):
                    out[:, i, j, :] += xp[:, i * stride + di, j * stride + dj, :] @ kernel[di, dj]
    return out


def np_batch_norm(x, gamma=None, beta=None, eps=EPS):
    """Training-mode BN: batch mean, biased batch variance."""
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    y = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma + beta
    return y


def np_sep_conv(x, kernels, stride, pad):
    dw1, pw1, dw2, pw2 = kernels
    y = np_batch_norm(np_conv(np_depthwise_conv(np_relu(x), dw1, stride, pad), pw1))
    return np_batch_norm(np_conv(np_depthwise_conv(np_relu(y), dw2, 1, pad), pw2))


def np_dil_conv(x, kernels, stride, pad, dilation):
    dw, pw = kernels
    return np_batch_norm(np_conv(np_depthwise_conv(np_relu(x), dw, stride, pad, dilation), pw))


def np_factorized_reduce_pre_bn(x, kernels):
    x = np_relu(x)
    even = np_conv(x[:, 0::2, 0::2, :], kernels[0])
    odd = np_conv(x[:, 1::2, 1::2, :], kernels[1])
    return np.concatenate([even, odd], axis=-1)


# ----------------------------------------------------------------------------- specs


def op_spec(primitive, channels, stride, affine):
    """The class and constructor arguments ``OPS[primitive]`` should produce."""
    base = dict(c_in=channels, c_out=channels, affine=affine)
    if primitive == "none":
        return ops.Zero, dict(base, stride=stride)
    if primitive == "max_pool_3x3":
        return ops.MaxPool, dict(base, stride=stride)
    if primitive == "avg_pool_3x3":
        return ops.AvgPool, dict(base, stride=stride)
    if primitive == "skip_connect":
        if stride == 1:
            return ops.Identity, dict(base, stride=1)
        return ops.FactorizedReduce, base
    if primitive.startswith("sep_conv"):
        k = int(primitive[-1])
        return ops.SepConv, dict(base, kernel_size=k, stride=stride, padding=(k - 1) // 2)
    if primitive.startswith("dil_conv"):
        k = int(primitive[-1])
        return ops.DilConv, dict(base, kernel_size=k, stride=stride, padding=k - 1, dilation=2)
    raise AssertionError(primitive)


def expected_trainable_params(primitive, c, stride, affine):
    """Hand-derived parameter counts of the reference ops (convs without bias)."""
    bn = 2 * c if affine else 0  # gamma + beta per affine BN
    if primitive in ("none", "max_pool_3x3", "avg_pool_3x3"):
        return 0
    if primitive == "skip_connect":
        return 0 if stride == 1 else 2 * (c * (c // 2)) + bn  # = C*C (+2C)
    k = int(primitive[-1])
    if primitive.startswith("sep_conv"):
        return 2 * (k * k * c + c * c) + 2 * bn
    return k * k * c + c * c + bn  # dil_conv


def expected_non_trainable_params(primitive, c, stride, affine):
    if not affine or primitive in ("none", "max_pool_3x3", "avg_pool_3x3"):
        return 0
    if primitive == "skip_connect":
        return 0 if stride == 1 else 2 * c
    return (2 if primitive.startswith("sep_conv") else 1) * 2 * c  # moving mean + var


ALL_CASES = [(p, s, a) for p in PRIMITIVES for s in (1, 2) for a in (True, False)]
CASE_IDS = [f"{p}-s{s}-{'affine' if a else 'batchstat'}" for p, s, a in ALL_CASES]


def rng_normal(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- layer tests


@pytest.mark.parametrize("primitive,stride,affine", ALL_CASES, ids=CASE_IDS)
def test_op_layer(primitive, stride, affine, tmp_path):
    cls, kwargs = op_spec(primitive, C, stride, affine)
    x = tf.constant(rng_normal((2, 8, 8, C), dtype=np.float32))
    expected_shape = (2, 8 // stride, 8 // stride, C)
    run_layer_test(
        cls,
        kwargs,
        x,
        expected_shape,
        call_kwargs={"training": False},
        # One full .keras round trip per op class is enough.
        tmp_path=tmp_path if (stride == 2 and affine) else None,
        expected_num_trainable_params=expected_trainable_params(primitive, C, stride, affine),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("primitive,stride,affine", ALL_CASES, ids=CASE_IDS)
def test_make_op_builds_the_reference_op(primitive, stride, affine):
    cls, kwargs = op_spec(primitive, 6, stride, affine)
    op = ops.make_op(primitive, 6, stride, affine, name="probe", dtype="float64")
    assert type(op) is cls
    assert op.name == "probe"
    reference = cls(**kwargs, name="probe", dtype="float64").get_config()
    assert op.get_config() == reference
    assert type(ops.OPS[primitive](6, stride, affine)) is cls

    # Parameter counts with C=6 (build only) and float64 variables.
    op.build((None, 8, 8, 6))
    assert count_params(op.trainable_weights) == expected_trainable_params(
        primitive, 6, stride, affine
    )
    assert count_params(op.non_trainable_weights) == expected_non_trainable_params(
        primitive, 6, stride, affine
    )
    assert all(v.dtype == "float64" for v in op.weights)
    # kernels hold exactly the conv weights (BN parameters live in the norms)
    conv_params = expected_trainable_params(primitive, 6, stride, False)
    assert count_params(op.kernels) == conv_params


def test_param_formula_spot_values():
    # sep_conv_3x3(C=16): 2*(9*16 + 256) + 4*16 = 864; dil_conv_5x5(16): 25*16 + 256 + 32 = 688
    for primitive, expected in (
        ("sep_conv_3x3", 864),
        ("sep_conv_5x5", 2 * (25 * 16 + 256) + 64),
        ("dil_conv_3x3", 9 * 16 + 256 + 32),
        ("dil_conv_5x5", 688),
        ("skip_connect", 256 + 32),
    ):
        op = ops.make_op(primitive, 16, 2, True)
        op.build((None, 8, 8, 16))
        assert count_params(op.trainable_weights) == expected, primitive


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("size", [5, 6])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_matches_torch_reference(size, stride):
    # All-negative input: zero padding would win at the borders, -inf padding never does.
    x = rng_normal((2, size, size, 3), seed=size) - 10.0
    expected = np_max_pool(x, 3, stride, 1)
    op = ops.make_op("max_pool_3x3", 3, stride, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    assert out.shape == expected.shape == (2, (size - 1) // stride + 1, (size - 1) // stride + 1, 3)
    np.testing.assert_array_equal(out, expected)
    assert out.max() < -5.0
    # Corner of a stride-2 pool covers x[0:2, 0:2] only.
    np.testing.assert_array_equal(out[:, 0, 0, :], x[:, :2, :2, :].max(axis=(1, 2)))
    out32 = ops.max_pool_3x3(tf.constant(x, tf.float32), stride).numpy()
    np.testing.assert_allclose(out32, expected, rtol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_gradients_match_tf_max_pool(stride):
    # First and second derivatives equal those of tf.nn.max_pool2d (no ties in normal data).
    x = tf.constant(rng_normal((2, 6, 6, 3), seed=7))
    direction = tf.constant(rng_normal((2, 6, 6, 3), seed=9))

    def reference(t):
        return tf.nn.max_pool2d(ops._pad_hw(t, 1, float("-inf")), 3, stride, "VALID")

    def derivatives(pool):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(pool(x * x) ** 3)
            grad = inner.gradient(loss, x)
            projected = tf.reduce_sum(grad * direction)
        return grad.numpy(), outer.gradient(projected, x).numpy()

    for ours, theirs in zip(
        derivatives(lambda t: ops.max_pool_3x3(t, stride)), derivatives(reference)
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_max_pool_second_derivative_is_deterministic_in_tf_function():
    # TF 2.21's MaxPoolGradGrad on CPU races when the pooled tensor has other consumers: this
    # exact pattern returned two different values across 300 calls. Ours must not.
    x = tf.constant(rng_normal((4, 8, 8, 6), seed=1))
    weights = tf.constant(rng_normal((4, 8, 8, 6), seed=2))

    @tf.function
    def second_derivative(scale):
        with tf.GradientTape() as outer:
            outer.watch(scale)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = x * scale
                loss = tf.reduce_sum(weights * (ops.max_pool_3x3(y, 1) + y**2) ** 3)
            grad = inner.gradient(loss, x)
            projected = tf.reduce_sum(grad * weights)
        return outer.gradient(projected, scale)

    scale = tf.constant(1.1, tf.float64)
    values = {float(second_derivative(scale)) for _ in range(100)}
    assert len(values) == 1, values


@pytest.mark.parametrize("size", [5, 6])
@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_excludes_padding(size, stride):
    x = rng_normal((2, size, size, 3), seed=10 + size) + 3.0
    expected = np_avg_pool(x, 3, stride, 1)
    op = ops.make_op("avg_pool_3x3", 3, stride, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # Corner averages 4 real pixels (count_include_pad=False), not 9.
    np.testing.assert_allclose(out[:, 0, 0, :], x[:, :2, :2, :].mean(axis=(1, 2)), rtol=1e-12)
    out32 = ops.avg_pool_3x3(tf.constant(x, tf.float32), stride).numpy()
    np.testing.assert_allclose(out32, expected, rtol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_dilated_conv_matches_numpy(kernel, size, stride):
    x = rng_normal((2, size, size, 3), seed=kernel + size)
    w = rng_normal((kernel, kernel, 3, 1), seed=7)
    pad = kernel - 1  # dilation 2 keeps the size
    expected = np_depthwise_conv(x, w, stride, pad, dilation=2)
    out = ops.depthwise_conv2d(tf.constant(x), tf.constant(w), stride, pad, dilation=2).numpy()
    assert out.shape == expected.shape == (2, (size - 1) // stride + 1, (size - 1) // stride + 1, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("primitive", ["dil_conv_3x3", "dil_conv_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
def test_dil_conv_layer_matches_numpy(primitive, stride):
    k = int(primitive[-1])
    x = rng_normal((2, 7, 7, C), seed=3)
    op = ops.make_op(primitive, C, stride, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    kernels = [v.numpy() for v in op.kernels]
    expected = np_dil_conv(x, kernels, stride, k - 1, 2)
    assert out.shape == expected.shape == (2, 7 if stride == 1 else 4, 7 if stride == 1 else 4, C)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("primitive", ["sep_conv_3x3", "sep_conv_5x5"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sep_conv_layer_matches_numpy(primitive, stride):
    k = int(primitive[-1])
    x = rng_normal((2, 7, 7, C), seed=4)
    op = ops.make_op(primitive, C, stride, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    expected = np_sep_conv(x, [v.numpy() for v in op.kernels], stride, (k - 1) // 2)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)
    # Non-affine ops normalise with batch statistics in inference too.
    np.testing.assert_allclose(op(tf.constant(x), training=False).numpy(), out, rtol=1e-12)


def test_relu_conv_bn_matches_numpy():
    x = rng_normal((2, 7, 7, 3), seed=5)
    op = ops.ReLUConvBN(3, 6, kernel_size=3, stride=2, padding=1, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    expected = np_batch_norm(np_conv(np_relu(x), op.kernels[0].numpy(), 2, 1))
    assert out.shape == expected.shape == (2, 4, 4, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)
    assert op.compute_output_shape((2, 7, 7, 3)) == (2, 4, 4, 6)


def test_factorized_reduce_matches_numpy_batch_stats():
    x = rng_normal((2, 8, 8, 3), seed=6)
    op = ops.FactorizedReduce(3, 6, affine=False, dtype="float64")
    out = op(tf.constant(x)).numpy()
    kernels = [v.numpy() for v in op.kernels]
    assert [k.shape for k in kernels] == [(1, 1, 3, 3), (1, 1, 3, 3)]
    expected = np_batch_norm(np_factorized_reduce_pre_bn(x, kernels))
    assert out.shape == expected.shape == (2, 4, 4, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("training", [False, True])
def test_factorized_reduce_matches_numpy_affine(training):
    x = rng_normal((2, 8, 8, 3), seed=8)
    op = ops.FactorizedReduce(3, 4, affine=True, dtype="float64")
    op(tf.constant(x), training=False)  # build
    rng = np.random.default_rng(9)
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    moving_mean, moving_var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    op.norms[0].set_weights([gamma, beta, moving_mean, moving_var])
    out = op(tf.constant(x), training=training).numpy()
    pre = np_factorized_reduce_pre_bn(x, [v.numpy() for v in op.kernels])
    if training:
        expected = np_batch_norm(pre, gamma, beta)
    else:
        expected = (pre - moving_mean) / np.sqrt(moving_var + EPS) * gamma + beta
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


def test_factorized_reduce_rejects_odd_spatial_size():
    op = ops.FactorizedReduce(3, 4, affine=False)
    with pytest.raises(ValueError, match="even spatial size"):
        op(tf.zeros((2, 7, 7, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_affine_batch_norm(dtype):
    # Small variance (1e-4) so that eps=1e-5 is visible; 18 values per channel so that the
    # biased and unbiased variances differ by 6%.
    x = (rng_normal((2, 3, 3, 4), seed=11) * 0.01 + 0.5).astype(dtype)
    out = ops.batch_norm(tf.constant(x)).numpy()
    x64 = x.astype(np.float64)
    expected = np_batch_norm(x64)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=tol)
    biased_var = x64.var(axis=(0, 1, 2))  # numpy's var is biased (ddof=0)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), biased_var / (biased_var + EPS), rtol=tol)
    # With a scale and an offset.
    gamma, beta = np.array([1.0, 2.0, 0.5, -1.0]), np.array([0.0, 1.0, -2.0, 3.0])
    out = ops.batch_norm(tf.constant(x), tf.constant(gamma, x.dtype), tf.constant(beta, x.dtype))
    np.testing.assert_allclose(out.numpy(), expected * gamma + beta, rtol=tol, atol=2 * tol)


def test_batch_norm_without_eps_would_differ():
    # Guards the previous test's sensitivity: eps 1e-3 (Keras' default) is clearly different.
    x = rng_normal((2, 3, 3, 4), seed=11) * 0.01 + 0.5
    out = ops.batch_norm(tf.constant(x)).numpy()
    assert np.abs(out - np_batch_norm(x, eps=1e-3)).max() > 0.1
    unbiased = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2), ddof=1) + EPS)
    assert np.abs(out - unbiased).max() > 0.01


@pytest.mark.parametrize("kernel,dilation", [(3, 2), (5, 2), (3, 3)])
def test_dilate_kernel_matches_tf_dilations(kernel, dilation):
    w = rng_normal((kernel, kernel, 3, 1), seed=12)
    dilated = ops.dilate_kernel(tf.constant(w), dilation).numpy()
    size = (kernel - 1) * dilation + 1
    assert dilated.shape == (size, size, 3, 1)
    np.testing.assert_array_equal(dilated[::dilation, ::dilation], w)
    mask = np.ones((size, size), bool)
    mask[::dilation, ::dilation] = False
    assert np.all(dilated[mask] == 0.0)

    x = tf.constant(rng_normal((2, 9, 9, 3), seed=13))
    for padding in ("SAME", "VALID"):
        reference = tf.nn.depthwise_conv2d(
            x, w, [1, 1, 1, 1], padding, dilations=[dilation, dilation]
        ).numpy()
        explicit = tf.nn.depthwise_conv2d(x, dilated, [1, 1, 1, 1], padding).numpy()
        np.testing.assert_allclose(explicit, reference, rtol=1e-10, atol=1e-10)
    pad = (size - 1) // 2
    same = ops.depthwise_conv2d(x, tf.constant(w), 1, pad, dilation).numpy()
    reference = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", dilations=[dilation] * 2)
    np.testing.assert_allclose(same, reference.numpy(), rtol=1e-10, atol=1e-10)
    assert ops.dilate_kernel(tf.constant(w), 1).shape == w.shape


def test_zero_and_identity():
    x = tf.constant(rng_normal((2, 7, 7, 3), seed=14))
    for stride in (1, 2):
        out = ops.make_op("none", 3, stride, affine=False, dtype="float64")(x).numpy()
        assert out.shape == (2, 7 if stride == 1 else 4, 7 if stride == 1 else 4, 3)
        assert np.all(out == 0.0)
    out = ops.make_op("skip_connect", 3, 1, affine=True, dtype="float64")(x)
    np.testing.assert_array_equal(out.numpy(), x.numpy())


def test_forward_is_pure_in_kernels():
    # forward() must read weights from its arguments only: substituted kernels change the output.
    x = tf.constant(rng_normal((2, 8, 8, C), seed=15))
    op = ops.make_op("sep_conv_3x3", C, 2, affine=False, dtype="float64")
    y = op(x)
    np.testing.assert_allclose(op.forward([k.value for k in op.kernels], x).numpy(), y.numpy())
    doubled = [2.0 * k.value for k in op.kernels]
    expected = np_sep_conv(x.numpy(), [k.numpy() for k in doubled], 2, 1)
    np.testing.assert_allclose(op.forward(doubled, x).numpy(), expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- bad hparams


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_make_op_rejects_stride_3(primitive):
    with pytest.raises(ValueError, match="stride.*3"):
        ops.make_op(primitive, 4, 3, True)


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_ops_factories_reject_stride_3(primitive):
    with pytest.raises(ValueError, match="3"):
        ops.OPS[primitive](4, 3, True)


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("channels", [0, -2])
def test_make_op_rejects_non_positive_channels(primitive, channels):
    with pytest.raises(ValueError, match=str(channels)):
        ops.make_op(primitive, channels, 1, True)


def test_make_op_rejects_unknown_name():
    with pytest.raises(ValueError, match="conv_7x7"):
        ops.make_op("conv_7x7", 4, 1, True)


def test_factorized_reduce_rejects_odd_c_out():
    with pytest.raises(ValueError, match="3"):
        ops.FactorizedReduce(4, 3)


def test_factorized_reduce_rejects_odd_numpy_c_out():
    with pytest.raises(ValueError, match="3"):
        ops.FactorizedReduce(4, np.int64(3), affine=False)


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_build_rejects_wrong_input_channels(primitive):
    op = ops.make_op(primitive, 4, 2, True)
    with pytest.raises(ValueError, match=r"expects 4 input channels.*\(2, 8, 8, 3\)"):
        op(tf.zeros((2, 8, 8, 3)))


def test_other_bad_hparams():
    with pytest.raises(ValueError, match="padding 1"):
        ops.DilConv(4, 4, 3, 1, 1, 2)
    with pytest.raises(ValueError, match="kernel_size=4"):
        ops.SepConv(4, 4, 4, 1, 1)
    with pytest.raises(ValueError, match="-1"):
        ops.ReLUConvBN(4, 4, 1, 1, -1)
    with pytest.raises(ValueError, match="stride"):
        ops.Identity(4, 4, 2)
    with pytest.raises(ValueError, match="c_out=5"):
        ops.Identity(4, 5)
    with pytest.raises(ValueError, match="True"):
        ops.make_op("sep_conv_3x3", 4, True, True)
    with pytest.raises(ValueError, match="2.5"):
        ops.make_op("sep_conv_3x3", 2.5, 1, True)
