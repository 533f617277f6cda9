"""Candidate operations of the DARTS search space as Keras 3 layers.

Semantics follow the DARTS reference (quark0/darts ``cnn/operations.py``): ReLU -> conv -> BN
blocks, convolutions without bias, separable convolutions as two stacked (depthwise ->
pointwise -> BN) blocks, dilated convolutions with dilation 2, ``FactorizedReduce`` for
stride-2 skip connections, 3x3 pools, and PyTorch's symmetric padding (TF's ``"SAME"``
padding is asymmetric for stride 2, so stride-2 ops pad explicitly).

Every op is a Keras layer that owns its convolution kernels and calls a *pure* ``forward``
method that receives those kernels as tensors. The search cells call ``forward`` directly, so
a whole cell is a pure function of (kernels, inputs, mixing weights) that can be evaluated at
substituted weights; the layers' ``call`` simply passes their own variables.

Batch normalisation:
  * ``affine=True`` (evaluation networks): a ``keras.layers.BatchNormalization`` with
    PyTorch's defaults (epsilon 1e-5, momentum 0.1 -> Keras momentum 0.9) and moving
    statistics.
  * ``affine=False`` (search network): normalisation with the statistics of the current
    batch, in training and inference alike; the supernet keeps no running statistics, so
    evaluating it at substituted weights (``stateless_call``) has no state to thread.
    Float32/16 inputs use the fused kernel; float64 (used by gradient-check tests) uses
    ``tf.nn.moments``.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import validation
from ilnas_tf.genotype import PRIMITIVES

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.

__all__ = [
    "PRIMITIVES",
    "OPS",
    "AvgPool",
    "DilConv",
    "FactorizedReduce",
    "Identity",
    "MaxPool",
    "ReLUConvBN",
    "SepConv",
    "Zero",
    "batch_norm",
    "make_op",
    "skip_dropout",
]


# ----------------------------------------------------------------------------- kernels


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default conv/linear initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _replica_context():
    """The replica context when running on more than one replica, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _synchronized_moments(x, context):
    """Mean and biased variance over the global batch (all replicas), differentiably."""
    axes = [0, 1, 2]
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
    local_sum = tf.reduce_sum(x, axis=axes, keepdims=True)
    local_squares = tf.reduce_sum(tf.square(x), axis=axes, keepdims=True)
    total, squares, count = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [local_sum, local_squares, count]
    )
    mean = total / count
    return mean, squares / count - tf.square(mean)


def batch_norm(x, scale=None, offset=None, epsilon: float = BN_EPSILON):
    """Normalises NHWC ``x`` with the statistics of the current batch (biased variance).

    Under a distribution strategy with several replicas the statistics are those of the
    global batch (all-reduced, differentiable), so a distributed step computes what one
    device computes on the global batch.
    """
    channels = x.shape[-1]
    context = _replica_context()
    if context is not None:
        dtype = x.dtype
        if dtype in (tf.float16, tf.bfloat16):  # mixed precision: statistics in float32
            x = tf.cast(x, tf.float32)
        mean, variance = _synchronized_moments(x, context)
        y = (x - mean) * tf.math.rsqrt(variance + epsilon)
        if scale is not None:
            y = y * tf.cast(scale, x.dtype)
        if offset is not None:
            y = y + tf.cast(offset, x.dtype)
        return tf.cast(y, dtype)
    if x.dtype in (tf.float16, tf.bfloat16, tf.float32):
        if scale is None:
            scale = tf.ones([channels], tf.float32)
        if offset is None:
            offset = tf.zeros([channels], tf.float32)
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.cast(scale, tf.float32),
            offset=tf.cast(offset, tf.float32),
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=epsilon,
            is_training=True,
        )
        return y
    # Not tf.nn.moments: it stops the gradient through the mean inside the variance, which is
    # exact to first order but breaks second-order (hypergradient) derivatives.
    mean = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=[0, 1, 2], keepdims=True)
    y = centered * tf.math.rsqrt(variance + epsilon)
    if scale is not None:
        y = y * scale
    if offset is not None:
        y = y + offset
    return y


def _pad_hw(x, pad: int, value: float = 0.0):
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=value)


def conv2d(x, kernel, stride: int = 1, pad: int = 0):
    """Dense convolution with PyTorch's symmetric zero padding."""
    if pad:
        x = _pad_hw(x, pad)
    return tf.nn.conv2d(x, kernel, strides=stride, padding="VALID")


def dilate_kernel(kernel, dilation: int):
    """Inserts ``dilation - 1`` zeros between the taps of a ``[k, k, C, M]`` kernel."""
    if dilation == 1:
        return kernel
    k = kernel.shape[0]
    expanded = kernel[:, None, :, None]
    expanded = tf.pad(
        expanded, [[0, 0], [0, dilation - 1], [0, 0], [0, dilation - 1], [0, 0], [0, 0]]
    )
    size = k * dilation
    dilated = tf.reshape(expanded, [size, size, kernel.shape[2], kernel.shape[3]])
    effective = (k - 1) * dilation + 1
    return dilated[:effective, :effective]


def depthwise_conv2d(x, kernel, stride: int = 1, pad: int = 0, dilation: int = 1):
    """Depthwise convolution; dilation is applied to the kernel so any stride works."""
    kernel = dilate_kernel(kernel, dilation)
    effective = kernel.shape[0]
    if stride == 1 and 2 * pad == effective - 1:
        padding = "SAME"  # symmetric for odd kernels at stride 1
    else:
        x = _pad_hw(x, pad) if pad else x
        padding = "VALID"
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding=padding)


def _max3(x, axis: int, stride: int):
    """Max over windows of 3 along ``axis`` (already padded), taken every ``stride``."""
    count = (x.shape[axis] - 3) // stride + 1
    limit = stride * (count - 1) + 1

    def window(start):
        index = [slice(None)] * 4
        index[axis] = slice(start, start + limit, stride)
        return x[tuple(index)]

    return tf.maximum(tf.maximum(window(0), window(1)), window(2))


def max_pool_3x3(x, stride: int):
    """3x3 max pooling with padding 1 (padding never wins), as two separable window maxima.

    Not ``tf.nn.max_pool2d``: on CPU (TF 2.21) the second derivative of ``MaxPool``
    (``MaxPoolGradGrad``) is nondeterministic inside a ``tf.function`` when the pooled tensor
    has other consumers (a race; reproduced by ``tests/test_ops.py``'s second-order
    determinism test), which made exact hypergradients flip between values. Elementwise
    maxima of shifted slices give the same values, deterministic first and second
    derivatives, and fuse well under XLA.
    """
    x = _pad_hw(x, 1, value=float("-inf"))
    return _max3(_max3(x, 1, stride), 2, stride)


def _valid_counts(size: int, stride: int) -> np.ndarray:
    starts = np.arange(0, size + 2 - 3 + 1, stride) - 1
    return np.minimum(starts + 3, size) - np.maximum(starts, 0)


def avg_pool_3x3(x, stride: int):
    """3x3 average pooling, padding 1, padding excluded from the average."""
    if stride == 1:
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")  # TF's SAME excludes padding
    height, width = x.shape[1], x.shape[2]
    pooled = tf.nn.avg_pool2d(_pad_hw(x, 1), 3, stride, "VALID")
    counts = np.outer(_valid_counts(height, stride), _valid_counts(width, stride))
    correction = (9.0 / counts)[None, :, :, None]
    return pooled * tf.constant(correction, dtype=x.dtype)


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 and no padding (PyTorch ``nn.MaxPool2d(2, 2)``).

    PC-DARTS' bypass of the stride-2 edges of a reduction cell. The elementwise maximum of the
    four strided slices (deterministic second derivatives, see ``max_pool_3x3``). The height
    and width must be even (the ops of a stride-2 edge output ``ceil(size / 2)``, which the
    pooled bypass matches only then); the partial-channel cells check this when built.
    """
    top, bottom = x[:, 0::2], x[:, 1::2]
    rows = tf.maximum(top, bottom)
    return tf.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle of an NHWC tensor (Zhang et al., 2018), as PC-DARTS uses it.

    The channels, read as ``groups`` groups of ``C // groups``, are interleaved: input channel
    ``g * (C // groups) + j`` moves to position ``j * groups + g``. A fixed permutation.
    """
    channels = int(x.shape[-1])
    if groups == 1:
        return x
    shape = tf.shape(x)
    grouped = tf.reshape(x, tf.concat([shape[:3], [groups, channels // groups]], 0))
    return tf.reshape(tf.transpose(grouped, [0, 1, 2, 4, 3]), shape)


def _check_dropout_rate(rate):
    """``rate`` as a tensor; a number must lie in [0, 1) (a tensor's value is not checked)."""
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        value = float(rate)
        if not 0.0 <= value < 1.0:  # NaN fails too
            validation.fail("rate", rate, "a number in [0, 1)")
        return tf.constant(value, tf.float64)
    expected = "a number in [0, 1) or a scalar float tensor"
    if isinstance(rate, (bool, str, bytes)) or rate is None:
        validation.fail("rate", rate, expected)
    try:
        rate = tf.convert_to_tensor(rate)
    except (TypeError, ValueError):
        validation.fail("rate", rate, expected)
    if not rate.dtype.is_floating or rate.shape.rank not in (None, 0):
        validation.fail("rate", rate, expected)
    return rate


def skip_dropout(x, rate, noise, salt: int):
    """P-DARTS' dropout after a stride-1 ``skip_connect``, as a stateless function of the batch.

    P-DARTS (Chen et al., 2019, "Progressive Differentiable Architecture Search: Bridging the
    Depth Gap between Search and Evaluation") puts an (inverted) dropout after the identity of
    every stride-1 ``skip_connect`` of its search cells, each edge with its own masks: an entry
    is kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``, else zeroed.

    Here the mask is a pure function of ``(noise, salt)``, so every evaluation of a loss on the
    same batch (nested tapes, finite differences, recomputation, a resumed run) sees the same
    mask, and a replica of ``tf.distribute`` draws, for its slice of the global batch, the rows
    a single device draws for those examples: with ``B = b * num_replicas_in_sync`` the global
    batch size,

        u = stateless_uniform([B, H, W, C], seed=fold_in((noise[0, 0], noise[0, 1]), salt))
        keep = gather(u, noise[:, 2]) >= rate
        y = x * keep / (1 - rate)

    (Philox, float32 uniforms whatever the dtype of ``x``, so a float64 or mixed-precision
    network draws the masks of a float32 one). ``rate = 0`` returns ``x`` exactly; the
    derivative with respect to ``x`` is ``keep / (1 - rate)``.

    Args:
      x: ``[b, H, W, C]`` activations (float16, bfloat16, float32 or float64).
      rate: the drop probability, a Python number in [0, 1) or a scalar float tensor (assumed,
        not checked, to lie in [0, 1)).
      noise: int64 ``[b, 3]``; row ``i`` is (stream id, batch index, position of example ``i``
        in the global batch). The first two columns must be the same in every row; they and
        ``salt`` select the random stream.
      salt: a Python int distinguishing the masks of different edges on the same batch.

    Returns:
      ``x`` with dropout applied, in ``x``'s dtype.
    """
    salt = validation.check_int("salt", salt)
    rate = _check_dropout_rate(rate)
    noise = tf.convert_to_tensor(noise)
    if not noise.dtype.is_integer:
        validation.fail("noise", noise, "an int64 tensor [batch, 3]")
    if noise.shape.rank is not None and (noise.shape.rank != 2 or noise.shape[-1] not in (None, 3)):
        validation.fail("noise", noise, "an int64 tensor [batch, 3]")
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank != 4:
        validation.fail("x", x, "an NHWC tensor of rank 4")
    noise = tf.cast(noise, tf.int64)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    shape = tf.shape(x)
    global_shape = tf.concat([shape[:1] * replicas, shape[1:]], 0)
    # The stream and batch ids are the same in every row; max() also works on an empty batch.
    seed = tf.reduce_max(noise[:, :2], axis=0)
    seed = tf.random.experimental.stateless_fold_in(seed, salt, alg="philox")
    uniform = tf.random.stateless_uniform(global_shape, seed=seed, alg="philox")
    keep = tf.gather(uniform, noise[:, 2]) >= tf.cast(rate, tf.float32)
    return x * tf.cast(keep, x.dtype) / tf.cast(1.0 - tf.cast(rate, tf.float64), x.dtype)


# ----------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="ilnas_tf")
class DartsOp(keras.layers.Layer):
    """Base class: owns conv kernels and ``num_norms`` batch norms, calls ``forward``.

    Subclasses define ``kernel_specs()`` (list of (name, shape, fan_in)), ``norm_channels()``
    and ``forward(kernels, x, training)``, which must read weights only from ``kernels``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.c_in = validation.check_int("c_in", c_in, minimum=1)
        self.c_out = validation.check_int("c_out", c_out, minimum=1)
        self.stride = validation.check_int("stride", stride, minimum=1, maximum=2)
        self.affine = bool(affine)
        self.kernels = []
        self.norms = (
            [
                keras.layers.BatchNormalization(
                    momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype_policy, name=f"bn{i}"
                )
                for i in range(len(self.norm_channels()))
            ]
            if self.affine
            else []
        )

    def kernel_specs(self):
        return []

    def norm_channels(self):
        return []

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.c_in:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects {self.c_in} input channels, "
                f"got input shape {tuple(input_shape)}"
            )
        self.kernels = [
            self.add_weight(name=name, shape=shape, initializer=torch_uniform(fan_in))
            for name, shape, fan_in in self.kernel_specs()
        ]
        for norm, channels in zip(self.norms, self.norm_channels()):
            norm.build(tuple(input_shape[:-1]) + (channels,))

    def norm(self, index: int, y, training=None):
        if self.affine:
            return self.norms[index](y, training=training)
        return batch_norm(y)

    def call(self, x, training=None):
        return self.forward([k.value for k in self.kernels], x, training)

    def forward(self, kernels, x, training=None):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if self.stride == 2:
            height = None if height is None else (height + 1) // 2
            width = None if width is None else (width + 1) // 2
        return (input_shape[0], height, width, self.c_out)

    def get_config(self):
        config = super().get_config()
        config.update(c_in=self.c_in, c_out=self.c_out, stride=self.stride, affine=self.affine)
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class ReLUConvBN(DartsOp):
    """ReLU -> k x k conv (no bias) -> BN."""

    def __init__(self, c_in, c_out, kernel_size=1, stride=1, padding=0, affine=True, **kwargs):
        self.kernel_size = validation.check_int("kernel_size", kernel_size, minimum=1)
        self.padding = validation.check_int("padding", padding, minimum=0)
        super().__init__(c_in, c_out, stride, affine, **kwargs)

    def kernel_specs(self):
        k = self.kernel_size
        return [("kernel", (k, k, self.c_in, self.c_out), self.c_in * k * k)]

    def norm_channels(self):
        return [self.c_out]

    def forward(self, kernels, x, training=None):
        y = conv2d(tf.nn.relu(x), kernels[0], self.stride, self.padding)
        return self.norm(0, y, training)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        k, s, p = self.kernel_size, self.stride, self.padding
        height = None if height is None else (height + 2 * p - k) // s + 1
        width = None if width is None else (width + 2 * p - k) // s + 1
        return (input_shape[0], height, width, self.c_out)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class DilConv(DartsOp):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

    def __init__(
        self, c_in, c_out, kernel_size=3, stride=1, padding=2, dilation=2, affine=True, **kwargs
    ):
        self.kernel_size = validation.check_int("kernel_size", kernel_size, minimum=1)
        self.dilation = validation.check_int("dilation", dilation, minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if padding != (self.kernel_size - 1) * self.dilation // 2:
            raise ValueError(
                f"padding {padding!r} does not keep the spatial size for kernel_size "
                f"{kernel_size} and dilation {dilation}; expected "
                f"{(self.kernel_size - 1) * self.dilation // 2}"
            )
        self.padding = padding
        super().__init__(c_in, c_out, stride, affine, **kwargs)

    def kernel_specs(self):
        k = self.kernel_size
        return [
            ("depthwise", (k, k, self.c_in, 1), k * k),
            ("pointwise", (1, 1, self.c_in, self.c_out), self.c_in),
        ]

    def norm_channels(self):
        return [self.c_out]

    def forward(self, kernels, x, training=None):
        y = depthwise_conv2d(tf.nn.relu(x), kernels[0], self.stride, self.padding, self.dilation)
        y = conv2d(y, kernels[1])
        return self.norm(0, y, training)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, padding=self.padding, dilation=self.dilation)
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class SepConv(DartsOp):
    """Two stacked (ReLU -> depthwise k x k -> pointwise 1x1 -> BN) blocks; stride in the first."""

    def __init__(self, c_in, c_out, kernel_size=3, stride=1, padding=1, affine=True, **kwargs):
        self.kernel_size = validation.check_int("kernel_size", kernel_size, minimum=1)
        if self.kernel_size % 2 == 0 or padding != (self.kernel_size - 1) // 2:
            raise ValueError(
                f"SepConv needs an odd kernel_size and padding (kernel_size - 1) // 2, got "
                f"kernel_size={kernel_size!r}, padding={padding!r}"
            )
        self.padding = padding
        super().__init__(c_in, c_out, stride, affine, **kwargs)

    def kernel_specs(self):
        k = self.kernel_size
        return [
            ("depthwise1", (k, k, self.c_in, 1), k * k),
            ("pointwise1", (1, 1, self.c_in, self.c_in), self.c_in),
            ("depthwise2", (k, k, self.c_in, 1), k * k),
            ("pointwise2", (1, 1, self.c_in, self.c_out), self.c_in),
        ]

    def norm_channels(self):
        return [self.c_in, self.c_out]

    def forward(self, kernels, x, training=None):
        y = depthwise_conv2d(tf.nn.relu(x), kernels[0], self.stride, self.padding)
        y = self.norm(0, conv2d(y, kernels[1]), training)
        y = depthwise_conv2d(tf.nn.relu(y), kernels[2], 1, self.padding)
        return self.norm(1, conv2d(y, kernels[3]), training)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class FactorizedReduce(DartsOp):
    """ReLU -> two 1x1 stride-2 convs (one on the input shifted by a pixel) -> concat -> BN."""

    def __init__(self, c_in, c_out, affine=True, **kwargs):
        kwargs.pop("stride", None)
        c_out = validation.check_int("c_out", c_out, minimum=1)
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even c_out, got {c_out}")
        super().__init__(c_in, c_out, 2, affine, **kwargs)

    def kernel_specs(self):
        half = self.c_out // 2
        return [
            ("kernel1", (1, 1, self.c_in, half), self.c_in),
            ("kernel2", (1, 1, self.c_in, half), self.c_in),
        ]

    def norm_channels(self):
        return [self.c_out]

    def forward(self, kernels, x, training=None):
        x = tf.nn.relu(x)
        even = conv2d(x[:, ::2, ::2, :], kernels[0])
        odd = conv2d(x[:, 1::2, 1::2, :], kernels[1])
        if odd.shape[1] != even.shape[1] or odd.shape[2] != even.shape[2]:
            raise ValueError(
                f"FactorizedReduce '{self.name}' needs an even spatial size, got input "
                f"shape {tuple(x.shape)}"
            )
        return self.norm(0, tf.concat([even, odd], axis=-1), training)

    def get_config(self):
        config = super().get_config()
        config.pop("stride")
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Identity(DartsOp):
    def __init__(self, c_in, c_out=None, stride=1, affine=True, **kwargs):
        c_out = c_in if c_out is None else c_out
        if c_out != c_in or stride != 1:
            raise ValueError(
                f"Identity needs c_out == c_in and stride 1, got c_in={c_in}, "
                f"c_out={c_out}, stride={stride}"
            )
        super().__init__(c_in, c_out, stride, affine, **kwargs)

    def forward(self, kernels, x, training=None):
        return x


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Zero(DartsOp):
    """The ``none`` op: zeros with the output shape of a ``stride`` op."""

    def forward(self, kernels, x, training=None):
        if self.stride == 1:
            return tf.zeros_like(x)
        return tf.zeros_like(x[:, :: self.stride, :: self.stride, :])


@keras.saving.register_keras_serializable(package="ilnas_tf")
class MaxPool(DartsOp):
    """3x3 max pooling with padding 1 (padding never wins the max)."""

    def forward(self, kernels, x, training=None):
        return max_pool_3x3(x, self.stride)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class AvgPool(DartsOp):
    """3x3 average pooling with padding 1, padding excluded from the average."""

    def forward(self, kernels, x, training=None):
        return avg_pool_3x3(x, self.stride)


OPS = {
    "none": lambda c, stride, affine, **kw: Zero(c, c, stride, affine, **kw),
    "max_pool_3x3": lambda c, stride, affine, **kw: MaxPool(c, c, stride, affine, **kw),
    "avg_pool_3x3": lambda c, stride, affine, **kw: AvgPool(c, c, stride, affine, **kw),
    "skip_connect": lambda c, stride, affine, **kw: (
        Identity(c, c, 1, affine, **kw)
        if validation.check_int("stride", stride, minimum=1, maximum=2) == 1
        else FactorizedReduce(c, c, affine=affine, **kw)
    ),
    "sep_conv_3x3": lambda c, stride, affine, **kw: SepConv(c, c, 3, stride, 1, affine, **kw),
    "sep_conv_5x5": lambda c, stride, affine, **kw: SepConv(c, c, 5, stride, 2, affine, **kw),
    "dil_conv_3x3": lambda c, stride, affine, **kw: DilConv(c, c, 3, stride, 2, 2, affine, **kw),
    "dil_conv_5x5": lambda c, stride, affine, **kw: DilConv(c, c, 5, stride, 4, 2, affine, **kw),
}
"""Factories ``OPS[name](channels, stride, affine, **layer_kwargs) -> DartsOp``."""


def make_op(primitive: str, channels: int, stride: int, affine: bool, **layer_kwargs) -> DartsOp:
    """Builds candidate op ``primitive``; unknown names raise a ``ValueError``."""
    if primitive not in OPS:
        raise ValueError(f"unknown op {primitive!r}; expected one of {list(OPS)}")
    return OPS[primitive](
        channels,
        validation.check_int("stride", stride, minimum=1, maximum=2),
        affine,
        **layer_kwargs,
    )
