"""Evaluation networks built from a genotype (quark0/darts ``cnn/model.py``, layer for layer).

* ``Cell``: a discrete cell; every op is the affine version from ``ops.OPS``; drop path on
  every op output that is not an ``Identity`` (training only, rate passed at call time).
* ``NetworkCIFAR``: stem (3x3 conv to 3C + BN), ``layers`` cells with reductions at
  ``layers // 3`` and ``2 * layers // 3``, optional auxiliary head after cell
  ``2 * layers // 3``, global average pooling, Dense.
* ``NetworkImageNet``: two stride-2 stems, cell 0 sees a "reduction_prev" input, the ImageNet
  auxiliary head (without its second BN, as in the reference).

``call(images, training=...)`` returns the logits; in training mode with an auxiliary head it
returns ``(logits, aux_logits)``. The drop-path rate is a non-trainable variable
(``model.drop_path_rate``), so a training loop can ramp it per epoch without retracing.
``count_parameters`` reports trainable parameters without the auxiliary head, as the
reference's "param size".
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import ops


def _as_genotype(value) -> genotype_lib.Genotype:
    if isinstance(value, genotype_lib.Genotype):
        return value
    if isinstance(value, dict):
        return genotype_lib.Genotype.from_dict(value)
    if isinstance(value, str):
        return genotype_lib.load_genotype(value)
    raise ValueError(
        f"genotype must be a Genotype, its dict, a name or a JSON path; got {type(value).__name__}"
    )


def drop_path(x, rate, training):
    """Zeroes whole examples with probability ``rate`` and rescales the rest (training only)."""
    if not training:
        return x
    keep = 1.0 - tf.cast(rate, x.dtype)
    mask = tf.floor(keep + tf.random.uniform([tf.shape(x)[0], 1, 1, 1], dtype=x.dtype))
    return tf.cond(rate > 0, lambda: x / keep * mask, lambda: x)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Cell(keras.layers.Layer):
    """A discrete cell of a genotype (normal or reduction)."""

    def __init__(
        self, genotype, c_prev_prev, c_prev, channels, reduction, reduction_prev, **kwargs
    ):
        super().__init__(**kwargs)
        self.genotype = _as_genotype(genotype)
        self.c_prev_prev = ops._check_positive_int("c_prev_prev", c_prev_prev)
        self.c_prev = ops._check_positive_int("c_prev", c_prev)
        self.channels = ops._check_positive_int("channels", channels)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        if self.reduction_prev:
            self.preprocess0 = ops.FactorizedReduce(c_prev_prev, channels, name="preprocess0")
        else:
            self.preprocess0 = ops.ReLUConvBN(c_prev_prev, channels, 1, 1, 0, name="preprocess0")
        self.preprocess1 = ops.ReLUConvBN(c_prev, channels, 1, 1, 0, name="preprocess1")
        entries = self.genotype.reduce if self.reduction else self.genotype.normal
        self.concat = tuple(
            self.genotype.reduce_concat if self.reduction else self.genotype.normal_concat
        )
        self.steps = len(entries) // 2
        self.indices = [index for _, index in entries]
        self.cell_ops = [
            ops.make_op(
                name, channels, 2 if self.reduction and index < 2 else 1, True, name=f"op{i}_{name}"
            )
            for i, (name, index) in enumerate(entries)
        ]
        self.multiplier = len(self.concat)

    def build(self, s0_shape, s1_shape=None, drop_path_rate_shape=None):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s0_shape if s1_shape is None else s1_shape)
        shape = (None, None, None, self.channels)
        for op in self.cell_ops:
            op.build(shape)

    def call(self, s0, s1, drop_path_rate=0.0, training=None):
        states = [
            self.preprocess0(s0, training=training),
            self.preprocess1(s1, training=training),
        ]
        rate = tf.convert_to_tensor(drop_path_rate, dtype=s1.dtype)
        for node in range(self.steps):
            terms = []
            for j in (2 * node, 2 * node + 1):
                op = self.cell_ops[j]
                h = op(states[self.indices[j]], training=training)
                if not isinstance(op, ops.Identity):
                    h = drop_path(h, rate, training)
                terms.append(h)
            states.append(terms[0] + terms[1])
        return tf.concat([states[i] for i in self.concat], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            genotype=self.genotype.to_dict(),
            c_prev_prev=self.c_prev_prev,
            c_prev=self.c_prev,
            channels=self.channels,
            reduction=self.reduction,
            reduction_prev=self.reduction_prev,
        )
        return config


def _conv(filters, kernel, fan_in, name, strides=1, padding="valid"):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=ops.torch_uniform(fan_in),
        name=name,
    )


def _bn(name):
    return keras.layers.BatchNormalization(
        momentum=ops.BN_MOMENTUM, epsilon=ops.BN_EPSILON, name=name
    )


def _dense(units, fan_in, name):
    return keras.layers.Dense(
        units,
        kernel_initializer=ops.torch_uniform(fan_in),
        bias_initializer=ops.torch_uniform(fan_in),
        name=name,
    )


@keras.saving.register_keras_serializable(package="ilnas_tf")
class AuxiliaryHead(keras.layers.Layer):
    """Auxiliary classifier: ReLU, 5x5 avg-pool, 1x1 conv 128, 2x2 conv 768, Dense.

    ``imagenet=False`` (CIFAR, 8x8 input): pool stride 3, BN after both convs.
    ``imagenet=True`` (14x14 input): pool stride 2, no BN after the 2x2 conv (the reference).
    """

    def __init__(self, channels, num_classes, imagenet=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = ops._check_positive_int("channels", channels)
        self.num_classes = ops._check_positive_int("num_classes", num_classes)
        self.imagenet = bool(imagenet)
        self.pool = keras.layers.AveragePooling2D(5, strides=2 if self.imagenet else 3)
        self.conv1 = _conv(128, 1, channels, "conv1")
        self.bn1 = _bn("bn1")
        self.conv2 = _conv(768, 2, 128 * 4, "conv2")
        self.bn2 = None if self.imagenet else _bn("bn2")
        self.classifier = _dense(num_classes, 768, "classifier")

    def build(self, input_shape):
        self.conv1.build((None, None, None, self.channels))
        self.bn1.build((None, None, None, 128))
        self.conv2.build((None, None, None, 128))
        if self.bn2 is not None:
            self.bn2.build((None, None, None, 768))
        self.classifier.build((None, 768))  # 8x8 (CIFAR) / 7x7 (ImageNet) input -> 1x1x768

    def call(self, x, training=None):
        x = self.pool(tf.nn.relu(x))
        x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        x = self.conv2(x)
        if self.bn2 is not None:
            x = self.bn2(x, training=training)
        x = tf.nn.relu(x)
        return self.classifier(tf.reshape(x, [tf.shape(x)[0], -1]))

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_classes=self.num_classes, imagenet=self.imagenet)
        return config


class _Network(keras.Model):
    """Shared body of the evaluation networks: cells, auxiliary head, classifier."""

    imagenet = False

    def __init__(
        self, channels, num_classes, layers, auxiliary, genotype, drop_path_rate, **kwargs
    ):
        super().__init__(**kwargs)
        self.channels = ops._check_positive_int("channels", channels)
        self.num_classes = ops._check_positive_int("num_classes", num_classes)
        self.num_layers = ops._check_positive_int("layers", layers)
        if self.num_layers < 3:
            raise ValueError(
                f"layers must be >= 3 (two reduction cells and one normal), got {layers}"
            )
        self.auxiliary = bool(auxiliary)
        self.genotype = _as_genotype(genotype)
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.drop_path_rate = keras.Variable(
            float(drop_path_rate), trainable=False, name="drop_path_rate"
        )
        self._build_stem()
        c_prev_prev, c_prev, c_curr = self._stem_channels()
        reduction_prev = self.imagenet
        reductions = (self.num_layers // 3, 2 * self.num_layers // 3)
        self.cells = []
        self.auxiliary_head = None
        for i in range(self.num_layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = Cell(
                self.genotype,
                c_prev_prev,
                c_prev,
                c_curr,
                reduction,
                reduction_prev,
                name=f"cell_{i}",
            )
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == 2 * self.num_layers // 3 and self.auxiliary:
                self.auxiliary_head = AuxiliaryHead(
                    c_prev, num_classes, imagenet=self.imagenet, name="auxiliary_head"
                )
        self.classifier = _dense(num_classes, c_prev, "classifier")

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        self._build_stem_layers(input_shape)
        s0, s1 = self._stem_shapes(height, width)
        for i, cell in enumerate(self.cells):
            cell.build(s0, s1)
            height, width = s1[1], s1[2]
            if cell.reduction:
                height = None if height is None else (height + 1) // 2
                width = None if width is None else (width + 1) // 2
            s0, s1 = s1, (None, height, width, cell.multiplier * cell.channels)
            if i == 2 * self.num_layers // 3 and self.auxiliary_head is not None:
                self.auxiliary_head.build(s1)
        self.classifier.build((None, s1[-1]))

    def call(self, images, training=None):
        s0, s1 = self._stem(images, training)
        rate = tf.convert_to_tensor(self.drop_path_rate)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, rate, training=training)
            if i == 2 * self.num_layers // 3 and self.auxiliary_head is not None and training:
                aux_logits = self.auxiliary_head(s1, training=training)
        logits = self.classifier(tf.reduce_mean(s1, axis=[1, 2]))
        if aux_logits is not None:
            return logits, aux_logits
        return logits

    def get_config(self):
        return {
            "channels": self.channels,
            "num_classes": self.num_classes,
            "layers": self.num_layers,
            "auxiliary": self.auxiliary,
            "genotype": self.genotype.to_dict(),
            "drop_path_rate": float(self.drop_path_rate.numpy()),
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="ilnas_tf")
class NetworkCIFAR(_Network):
    """DARTS CIFAR evaluation network (defaults: C=36, 20 cells, 10 classes, DARTS_V2)."""

    def __init__(
        self,
        channels=36,
        num_classes=10,
        layers=20,
        auxiliary=True,
        genotype=genotype_lib.DARTS_V2,
        drop_path_rate=0.0,
        **kwargs,
    ):
        super().__init__(
            channels, num_classes, layers, auxiliary, genotype, drop_path_rate, **kwargs
        )

    def _build_stem(self):
        self.stem_conv = _conv(3 * self.channels, 3, 27, "stem_conv", padding="same")
        self.stem_bn = _bn("stem_bn")

    def _stem_channels(self):
        return 3 * self.channels, 3 * self.channels, self.channels

    def _build_stem_layers(self, input_shape):
        self.stem_conv.build(input_shape)
        self.stem_bn.build((None, None, None, 3 * self.channels))

    def _stem_shapes(self, height, width):
        shape = (None, height, width, 3 * self.channels)
        return shape, shape

    def _stem(self, images, training):
        s = self.stem_bn(self.stem_conv(images), training=training)
        return s, s


@keras.saving.register_keras_serializable(package="ilnas_tf")
class NetworkImageNet(_Network):
    """DARTS ImageNet evaluation network (defaults: C=48, 14 cells, 1000 classes, DARTS_V2)."""

    imagenet = True

    def __init__(
        self,
        channels=48,
        num_classes=1000,
        layers=14,
        auxiliary=True,
        genotype=genotype_lib.DARTS_V2,
        drop_path_rate=0.0,
        **kwargs,
    ):
        if isinstance(channels, int) and channels % 2:
            raise ValueError(f"NetworkImageNet needs even channels (stem uses C/2), got {channels}")
        super().__init__(
            channels, num_classes, layers, auxiliary, genotype, drop_path_rate, **kwargs
        )

    def _build_stem(self):
        c = self.channels
        self.stem0_conv1 = _conv(c // 2, 3, 27, "stem0_conv1", strides=2)
        self.stem0_bn1 = _bn("stem0_bn1")
        self.stem0_conv2 = _conv(c, 3, 9 * (c // 2), "stem0_conv2", strides=2)
        self.stem0_bn2 = _bn("stem0_bn2")
        self.stem1_conv = _conv(c, 3, 9 * c, "stem1_conv", strides=2)
        self.stem1_bn = _bn("stem1_bn")

    def _stem_channels(self):
        return self.channels, self.channels, self.channels

    def _build_stem_layers(self, input_shape):
        c = self.channels
        self.stem0_conv1.build(input_shape)
        self.stem0_bn1.build((None, None, None, c // 2))
        self.stem0_conv2.build((None, None, None, c // 2))
        self.stem0_bn2.build((None, None, None, c))
        self.stem1_conv.build((None, None, None, c))
        self.stem1_bn.build((None, None, None, c))

    def _stem_shapes(self, height, width):
        def down(size):
            return None if size is None else (size + 1) // 2

        h0, w0 = down(down(height)), down(down(width))
        return (None, h0, w0, self.channels), (None, down(h0), down(w0), self.channels)

    def _stem(self, images, training):
        def pad(x):  # PyTorch's symmetric padding 1 before each stride-2 3x3 conv
            return tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])

        s0 = tf.nn.relu(self.stem0_bn1(self.stem0_conv1(pad(images)), training=training))
        s0 = self.stem0_bn2(self.stem0_conv2(pad(s0)), training=training)
        s1 = self.stem1_bn(self.stem1_conv(pad(tf.nn.relu(s0))), training=training)
        return s0, s1


def count_parameters(model, exclude="auxiliary") -> int:
    """Trainable parameters whose variable path does not contain ``exclude``."""
    total = 0
    for variable in model.trainable_variables:
        if exclude and exclude in variable.path:
            continue
        total += int(tf.size(variable))
    return total
