"""Evaluation networks built from a discrete genotype (quark0/darts ``cnn/model.py``), NHWC.

Layer for layer this is the reference evaluation code:

* ``Cell``: the discrete cell of a :class:`~ilnas_tf.genotype.Genotype`: two preprocessing
  ops (``FactorizedReduce`` for input 0 after a reduction cell, else ReLU-conv1x1-BN), one op
  per genotype entry (stride 2 on the edges from the two cell inputs of a reduction cell),
  ``state_{i+2} = op_{2i}(h) + op_{2i+1}(h')``, output = concatenation of the ``*_concat``
  states. Drop path (per-sample, training only) on every op output except identities.
* ``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet``: the auxiliary classifiers, including the
  reference's ImageNet quirk (no BN after the 2x2 convolution).
* ``NetworkCIFAR`` / ``NetworkImageNet``: stem -> cells (reductions at ``layers // 3`` and
  ``2 * layers // 3``) -> global average pooling -> linear classifier, with the auxiliary head
  after cell ``2 * layers // 3``.
* ``count_parameters``: the reference's "param size" (trainable parameters outside the
  auxiliary head).

Every BN is affine with moving statistics (``ops.BN_EPSILON``, ``ops.BN_MOMENTUM``, PyTorch's
defaults); convolutions have no bias; convolution and linear weights use PyTorch's default
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` initialisation (``ops.torch_uniform``), linear biases
too. Stride-2 convolutions pad symmetrically like PyTorch (explicit padding, then ``VALID``).

Output convention of the networks (the reference returns ``(logits, logits_aux)`` with
``logits_aux = None`` outside training): ``model(images, training=True)`` returns the tuple
``(logits, aux_logits)`` when the network has an auxiliary head and ``logits`` otherwise; in
inference (``training`` false or ``None``) it always returns ``logits``. ``compute_loss`` and
``compute_metrics`` understand that tuple, so ``model.compile(loss=..., metrics=[...])`` and
``model.fit`` train with ``loss(y, logits) + auxiliary_weight * loss(y, aux_logits)`` (the
reference's ``--auxiliary_weight``, default 0.4) and report metrics on the main logits, while
``evaluate``/``predict`` see plain logits.

Drop path: each network owns a non-trainable scalar ``keras.Variable``
``model.drop_path_rate``; ``model.drop_path_rate = value`` (or ``.assign(value)``, or
``set_drop_path_rate(value)``) updates it in place (the reference sets
``drop_path_prob * epoch / epochs`` every epoch), so a compiled ``train_step`` reads the new
rate without retracing. The variable is saved with the weights.

Saving weights: use Keras' own formats (``model.save("x.keras")``,
``model.save_weights("x.weights.h5")``) or ``train_loop.model_checkpoint(model)``. A plain
``tf.train.Checkpoint(model=model)`` misses most variables: Keras 3 does not expose layers and
variables held in Python lists (the cells, the ops' kernels) to TensorFlow's checkpoint object
graph, so such a checkpoint silently holds only the auxiliary head, the classifier and the
drop-path rate.
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import ops, validation
from ilnas_tf.genotype import STEM_MULTIPLIER, reduction_layers

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "Cell",
    "ConvBN",
    "NetworkCIFAR",
    "NetworkImageNet",
    "count_parameters",
    "drop_path",
    "resolve_genotype",
]

AUXILIARY_CHANNELS = (128, 768)


# ----------------------------------------------------------------------------- helpers


def resolve_genotype(genotype) -> genotype_lib.Genotype:
    """Returns ``genotype`` as a :class:`~ilnas_tf.genotype.Genotype`.

    Args:
        genotype: A ``Genotype``; a dict as written by ``Genotype.to_dict`` (what configs
            store); or a string ``genotype.load_genotype`` resolves (a published name such as
            ``"DARTS_V2"``, genotype text ``"Genotype(normal=[...], ...)"``, a JSON file or a
            search directory).

    Returns:
        The genotype.

    Raises:
        ValueError: If ``genotype`` has another type, is an unknown name or is invalid.
    """
    if isinstance(genotype, genotype_lib.Genotype):
        return genotype
    if isinstance(genotype, dict):
        return genotype_lib.Genotype.from_dict(genotype)
    if isinstance(genotype, str):
        return genotype_lib.load_genotype(genotype)
    raise ValueError(
        "genotype must be a Genotype, a genotype dict, a published genotype name, genotype "
        f"text or a genotype JSON path, got {type(genotype).__name__} {genotype!r}"
    )


def _check_rate(name: str, value) -> float:
    """A drop-path rate: a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        validation.fail(name, value, "a number >= 0 and < 1")
    return float(value)


def _halve(size):
    return None if size is None else (size + 1) // 2


def drop_path(x, rate, seed=None):
    """Per-sample drop path: ``x / keep_prob * mask`` with ``mask ~ Bernoulli(keep_prob)``.

    The mask has shape ``[batch, 1, 1, 1]`` (one draw per sample), ``keep_prob = 1 - rate``,
    as in the reference ``utils.drop_path``. ``rate`` may be a Python number or a scalar
    tensor; at ``rate == 0`` the result equals ``x`` exactly (the mask is all ones).

    Args:
        x: NHWC tensor.
        rate: Drop probability in ``[0, 1)``.
        seed: ``None``, an int or a ``keras.random.SeedGenerator``.

    Returns:
        A tensor like ``x``.
    """
    keep_prob = 1.0 - tf.cast(rate, tf.float32)
    noise = keras.random.uniform(tf.stack([tf.shape(x)[0], 1, 1, 1]), seed=seed)
    mask = tf.cast(tf.floor(keep_prob + noise), x.dtype)
    return x / tf.cast(keep_prob, x.dtype) * mask


# ----------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="ilnas_tf")
class ConvBN(ops.ReLUConvBN):
    """k x k convolution (no bias, symmetric zero padding) -> affine BN, without a ReLU.

    The stem block of the reference networks (``nn.Conv2d(..., bias=False)`` followed by
    ``nn.BatchNorm2d``). Arguments are those of ``ops.ReLUConvBN``.
    """

    def forward(self, kernels, x, training=None):
        y = ops.conv2d(x, kernels[0], self.stride, self.padding)
        return self.norm(0, y, training)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Cell(keras.layers.Layer):
    """A discrete DARTS cell (reference ``model.Cell``).

    Call as ``cell(s0, s1, drop_path_rate=0.0, training=None)`` with ``s0``/``s1`` the
    outputs of the two previous cells; returns ``(batch, h, w, multiplier * channels)`` with
    ``h, w`` those of ``s1`` (halved for a reduction cell) and ``multiplier`` the length of the
    genotype's concat list. In training mode drop path is applied to every op output except
    identities (``skip_connect`` at stride 1): always when ``drop_path_rate`` is a tensor (a
    rate of 0 then changes nothing), and when it is a Python number only if it is positive,
    as in the reference.

    Args:
        genotype: A ``Genotype`` or anything :func:`resolve_genotype` accepts.
        c_prev_prev: Channels of ``s0``.
        c_prev: Channels of ``s1``.
        channels: Channels of every node of this cell.
        reduction: Use the genotype's reduction cell (stride 2 on edges from the inputs).
        reduction_prev: The previous cell was a reduction: ``s0`` has twice the spatial size
            of ``s1`` and is preprocessed by a ``FactorizedReduce``.
        seed: Optional int seed of the drop-path noise.
        **kwargs: Base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: On a bad genotype or non-positive channel counts; ``FactorizedReduce``
            (after a reduction cell, and for stride-2 skip connections) needs an even
            ``channels``.
    """

    def __init__(
        self,
        genotype,
        c_prev_prev,
        c_prev,
        channels,
        reduction,
        reduction_prev,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.genotype = resolve_genotype(genotype)
        self.c_prev_prev = validation.check_int("c_prev_prev", c_prev_prev, minimum=1)
        self.c_prev = validation.check_int("c_prev", c_prev, minimum=1)
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        self.seed = validation.check_optional(validation.check_int, "seed", seed, minimum=0)
        # Allow ``cell(s0, s1, 0.2)``: Keras otherwise rejects a Python float positionally.
        self._allow_non_tensor_positional_args = True
        dtype = self.dtype_policy
        if self.reduction_prev:
            self.preprocess0 = ops.FactorizedReduce(
                self.c_prev_prev, self.channels, affine=True, dtype=dtype, name="preprocess0"
            )
        else:
            self.preprocess0 = ops.ReLUConvBN(
                self.c_prev_prev, self.channels, 1, 1, 0, affine=True, dtype=dtype,
                name="preprocess0",
            )  # fmt: skip
        self.preprocess1 = ops.ReLUConvBN(
            self.c_prev, self.channels, 1, 1, 0, affine=True, dtype=dtype, name="preprocess1"
        )
        if self.reduction:
            edges, concat = self.genotype.reduce, self.genotype.reduce_concat
        else:
            edges, concat = self.genotype.normal, self.genotype.normal_concat
        self.steps = len(edges) // 2
        self.op_names = tuple(name for name, _ in edges)
        self.indices = tuple(index for _, index in edges)
        self.concat = tuple(concat)
        self.multiplier = len(self.concat)
        self.edge_ops = [
            ops.make_op(
                name,
                self.channels,
                2 if self.reduction and index < 2 else 1,
                True,
                dtype=dtype,
                name=f"op{j}_{name}",
            )
            for j, (name, index) in enumerate(edges)
        ]
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="drop_path_seed")

    @property
    def output_channels(self) -> int:
        """Channels of the cell output: ``multiplier * channels``."""
        return self.multiplier * self.channels

    def build(self, s0_shape, s1_shape=None, drop_path_rate_shape=None):
        # Keras matches build's arguments to call's (s0, s1, drop_path_rate) by name.
        s1_shape = s0_shape if s1_shape is None else s1_shape
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        batch, height, width = s1_shape[0], s1_shape[1], s1_shape[2]
        state = (batch, height, width, self.channels)
        node = (batch, _halve(height), _halve(width), self.channels) if self.reduction else state
        for op, index in zip(self.edge_ops, self.indices):
            op.build(state if index < 2 else node)

    def call(self, s0, s1, drop_path_rate=0.0, training=None):
        states = [
            self.preprocess0(s0, training=training),
            self.preprocess1(s1, training=training),
        ]
        if isinstance(drop_path_rate, numbers.Real):
            use_drop_path = bool(training) and _check_rate("drop_path_rate", drop_path_rate) > 0
        else:
            use_drop_path = bool(training)
        for i in range(self.steps):
            terms = []
            for j in (2 * i, 2 * i + 1):
                op = self.edge_ops[j]
                h = op(states[self.indices[j]], training=training)
                if use_drop_path and not isinstance(op, ops.Identity):
                    h = drop_path(h, drop_path_rate, self.seed_generator)
                terms.append(h)
            states.append(terms[0] + terms[1])
        return tf.concat([states[i] for i in self.concat], axis=-1)

    def compute_output_shape(self, s0_shape, s1_shape=None, drop_path_rate_shape=None):
        s1_shape = s0_shape if s1_shape is None else s1_shape
        height, width = s1_shape[1], s1_shape[2]
        if self.reduction:
            height, width = _halve(height), _halve(width)
        return (s1_shape[0], height, width, self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            genotype=self.genotype.to_dict(),
            c_prev_prev=self.c_prev_prev,
            c_prev=self.c_prev,
            channels=self.channels,
            reduction=self.reduction,
            reduction_prev=self.reduction_prev,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["genotype"] = resolve_genotype(config["genotype"])
        return super().from_config(config)


class _AuxiliaryHead(keras.layers.Layer):
    """ReLU -> 5x5 avg pool (VALID) -> conv1x1 128 + BN + ReLU -> conv2x2 768 (+ BN) + ReLU
    -> flatten -> Dense. Subclasses set the pool stride, the second BN and the input size."""

    pool_stride = 1
    second_norm = True
    expected_input = ""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = validation.check_int("num_classes", num_classes, minimum=1)
        hidden, features = AUXILIARY_CHANNELS
        dtype = self.dtype_policy

        def norm(name):
            return keras.layers.BatchNormalization(
                momentum=ops.BN_MOMENTUM, epsilon=ops.BN_EPSILON, dtype=dtype, name=name
            )

        self.norm1 = norm("bn1")
        self.norm2 = norm("bn2") if self.second_norm else None
        self.conv1 = None
        self.conv2 = keras.layers.Conv2D(
            features,
            2,
            padding="valid",
            use_bias=False,
            kernel_initializer=ops.torch_uniform(hidden * 2 * 2),
            dtype=dtype,
            name="conv2",
        )
        self.classifier = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=ops.torch_uniform(features),
            bias_initializer=ops.torch_uniform(features),
            dtype=dtype,
            name="classifier",
        )

    def _spatial_out(self, size):
        if size is None:
            return None
        pooled = (size - 5) // self.pool_stride + 1
        return pooled - 1

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} expects NHWC inputs with known channels, got shape "
                f"{tuple(input_shape)}"
            )
        for size in (input_shape[1], input_shape[2]):
            if size is not None and (size < 5 or self._spatial_out(size) != 1):
                raise ValueError(
                    f"{type(self).__name__} expects {self.expected_input} inputs (the "
                    f"classifier takes {AUXILIARY_CHANNELS[1]} features, as in the reference), "
                    f"got input shape {tuple(input_shape)}"
                )
        hidden, features = AUXILIARY_CHANNELS
        channels = int(input_shape[-1])
        self.conv1 = keras.layers.Conv2D(
            hidden,
            1,
            use_bias=False,
            kernel_initializer=ops.torch_uniform(channels),
            dtype=self.dtype_policy,
            name="conv1",
        )
        batch = input_shape[0]
        pooled = (batch, None, None, channels)
        self.conv1.build(pooled)
        self.norm1.build((batch, None, None, hidden))
        self.conv2.build((batch, None, None, hidden))
        if self.norm2 is not None:
            self.norm2.build((batch, None, None, features))
        self.classifier.build((batch, features))

    def call(self, x, training=None):
        x = tf.nn.relu(x)
        x = tf.nn.avg_pool2d(x, 5, self.pool_stride, "VALID")
        x = tf.nn.relu(self.norm1(self.conv1(x), training=training))
        x = self.conv2(x)
        if self.norm2 is not None:
            x = self.norm2(x, training=training)
        x = tf.nn.relu(x)
        if x.shape[1] is not None and x.shape[2] is not None:
            x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
        else:
            x = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))
        return self.classifier(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """Auxiliary classifier of ``NetworkCIFAR`` for 8x8 inputs (reference ``AuxiliaryHeadCIFAR``).

    ReLU -> 5x5 average pool stride 3 (VALID: 8x8 -> 2x2) -> conv1x1 128 + BN + ReLU ->
    conv2x2 768 (VALID: -> 1x1) + BN + ReLU -> flatten -> Dense(``num_classes``). Input
    channels are taken from the input shape.

    Args:
        num_classes: Number of logits.
        **kwargs: Base ``keras.layers.Layer`` arguments.

    Raises:
        ValueError: On a non-positive ``num_classes``; at build time, on a spatial size that
            does not reduce to 1x1 (8 to 10 pixels do).
    """

    pool_stride = 3
    second_norm = True
    expected_input = "8x8"


@keras.saving.register_keras_serializable(package="ilnas_tf")
class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """Auxiliary classifier of ``NetworkImageNet`` (reference ``AuxiliaryHeadImageNet``).

    ReLU -> 5x5 average pool stride 2 (VALID) -> conv1x1 128 + BN + ReLU -> conv2x2 768
    (VALID) + ReLU -> flatten -> Dense(``num_classes``). There is deliberately no BN after the
    2x2 convolution: the reference comments it out "for consistency with the experiments in
    the paper". The reference docstring says "assuming input size 14x14", but the head sits
    after the second reduction cell, i.e. on 7x7 maps for 224x224 images, and only 7x7 or
    8x8 maps reduce to the 1x1x768 features its ``Linear(768, num_classes)`` takes.

    Args:
        num_classes: Number of logits.
        **kwargs: Base ``keras.layers.Layer`` arguments.

    Raises:
        ValueError: On a non-positive ``num_classes``; at build time, on a spatial size that
            does not reduce to 1x1.
    """

    pool_stride = 2
    second_norm = False
    expected_input = "7x7"


# ----------------------------------------------------------------------------- networks


class _Network(keras.Model):
    """Shared parts of the evaluation networks: cells, auxiliary head, classifier, drop path,
    auxiliary loss. Subclasses define the stem (``_make_stem``, ``_build_stem``, ``_stem``)."""

    auxiliary_head_class = AuxiliaryHeadCIFAR

    def __init__(
        self,
        channels,
        num_classes,
        layers,
        auxiliary,
        genotype,
        drop_path_rate,
        auxiliary_weight,
        seed,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.num_classes = validation.check_int("num_classes", num_classes, minimum=1)
        self.num_layers = validation.check_int("layers", layers, minimum=1)
        if self.num_layers < 3:
            validation.fail(
                "layers",
                layers,
                "an integer >= 3 (the reduction cells layers // 3 and 2 * layers // 3 must be "
                "distinct and follow a normal cell)",
            )
        self.auxiliary = bool(auxiliary)
        self.genotype = resolve_genotype(genotype)
        initial_rate = _check_rate("drop_path_rate", drop_path_rate)
        self.auxiliary_weight = validation.check_number(
            "auxiliary_weight", auxiliary_weight, minimum=0.0
        )
        self.seed = validation.check_optional(validation.check_int, "seed", seed, minimum=0)
        self.reductions = reduction_layers(self.num_layers)
        self.auxiliary_index = 2 * self.num_layers // 3
        dtype = self.dtype_policy

        c_prev_prev, c_prev, c_curr, reduction_prev = self._make_stem()
        self.cells = []
        c_auxiliary = None
        for index in range(self.num_layers):
            reduction = index in self.reductions
            if reduction:
                c_curr *= 2
            cell = Cell(
                self.genotype,
                c_prev_prev,
                c_prev,
                c_curr,
                reduction,
                reduction_prev,
                seed=None if self.seed is None else self.seed + index,
                dtype=dtype,
                name=f"cell_{index}",
            )
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.output_channels
            if index == self.auxiliary_index:
                c_auxiliary = c_prev
        self.auxiliary_channels = c_auxiliary
        self.output_channels = c_prev
        self.auxiliary_head = (
            self.auxiliary_head_class(self.num_classes, dtype=dtype, name="auxiliary_head")
            if self.auxiliary
            else None
        )
        self.classifier = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=ops.torch_uniform(c_prev),
            bias_initializer=ops.torch_uniform(c_prev),
            dtype=dtype,
            name="classifier",
        )
        self.drop_path_rate = keras.Variable(
            initial_rate, dtype="float32", trainable=False, autocast=False, name="drop_path_rate"
        )

    # -- drop path

    def __setattr__(self, name, value):
        # ``model.drop_path_rate = 0.2`` assigns the variable instead of replacing it, so
        # compiled steps keep reading the same variable (no retracing).
        current = self.__dict__.get("drop_path_rate") if name == "drop_path_rate" else None
        if isinstance(current, keras.Variable) and not isinstance(value, keras.Variable):
            current.assign(_check_rate("drop_path_rate", value))
            return
        super().__setattr__(name, value)

    def set_drop_path_rate(self, value) -> None:
        """Sets the drop-path rate (a number in [0, 1)); same as ``model.drop_path_rate = value``.

        Raises:
            ValueError: If ``value`` is not a number in [0, 1).
        """
        self.drop_path_rate.assign(_check_rate("drop_path_rate", value))

    # -- stem hooks

    def _make_stem(self):
        """Creates the stem layers; returns ``(c_prev_prev, c_prev, c_curr, reduction_prev)``."""
        raise NotImplementedError

    def _build_stem(self, input_shape):
        """Builds the stem; returns the shapes of ``(s0, s1)``."""
        raise NotImplementedError

    def _stem(self, images, training):
        """Returns ``(s0, s1)``."""
        raise NotImplementedError

    # -- keras

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects NHWC RGB images (batch, height, width, 3), got "
                f"input shape {input_shape}"
            )
        s0_shape, s1_shape = self._build_stem(input_shape)
        for index, cell in enumerate(self.cells):
            cell.build(s0_shape, s1_shape)
            s0_shape, s1_shape = s1_shape, cell.compute_output_shape(s0_shape, s1_shape)
            if index == self.auxiliary_index and self.auxiliary_head is not None:
                self.auxiliary_head.build(s1_shape)
        self.classifier.build((input_shape[0], self.output_channels))

    def call(self, images, training=None):
        s0, s1 = self._stem(images, training)
        rate = self.drop_path_rate.value
        aux_logits = None
        for index, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, rate, training=training)
            if index == self.auxiliary_index and self.auxiliary_head is not None and training:
                aux_logits = self.auxiliary_head(s1, training=training)
        logits = self.classifier(tf.reduce_mean(s1, axis=[1, 2]))
        if aux_logits is not None:
            return logits, aux_logits
        return logits

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss of the logits plus ``auxiliary_weight`` times that of the
        auxiliary logits when ``y_pred`` is the training-mode tuple."""
        if not isinstance(y_pred, (tuple, list)):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        logits, aux_logits = y_pred
        loss = super().compute_loss(x, y, logits, sample_weight, training)
        compiled_loss = getattr(self, "_compile_loss", None)
        if compiled_loss is not None and self.auxiliary_weight:
            aux_loss = compiled_loss(y, aux_logits, sample_weight)
            if aux_loss is not None:
                loss = loss + tf.cast(self.auxiliary_weight, loss.dtype) * aux_loss
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Compiled metrics of the main logits (the auxiliary logits are left out)."""
        if isinstance(y_pred, (tuple, list)):
            y_pred = y_pred[0]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            num_classes=self.num_classes,
            layers=self.num_layers,
            auxiliary=self.auxiliary,
            genotype=self.genotype.to_dict(),
            drop_path_rate=float(keras.ops.convert_to_numpy(self.drop_path_rate.value)),
            auxiliary_weight=self.auxiliary_weight,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["genotype"] = resolve_genotype(config["genotype"])
        return super().from_config(config, custom_objects=custom_objects)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class NetworkCIFAR(_Network):
    """The DARTS CIFAR evaluation network (reference ``model.NetworkCIFAR``).

    Stem: conv3x3 3 -> ``3 * channels`` (padding 1, no bias) + BN. Then ``layers`` cells
    (``c_prev_prev = c_prev = 3 * channels``, ``c_curr = channels``, doubled at each reduction
    cell ``layers // 3`` and ``2 * layers // 3``), the ``AuxiliaryHeadCIFAR`` (named
    ``auxiliary_head``) after cell ``2 * layers // 3`` (8x8 maps for 32x32 images), global
    average pooling and a linear classifier. See the module docstring for the output
    convention and drop path.

    Args:
        channels: Initial channels C (36 in the DARTS paper).
        num_classes: Number of classes.
        layers: Number of cells (20 in the paper), at least 3.
        auxiliary: Build the auxiliary head.
        genotype: A ``Genotype`` or anything :func:`resolve_genotype` accepts.
        drop_path_rate: Initial drop-path rate in [0, 1) (the reference starts at 0 and sets
            ``drop_path_prob * epoch / epochs`` every epoch).
        auxiliary_weight: Weight of the auxiliary loss in ``compute_loss``.
        seed: Optional int seed of the drop-path noise (cell ``i`` uses ``seed + i``).
        **kwargs: Base ``keras.Model`` arguments (``name``, ``dtype``, ...).

    Raises:
        ValueError: On invalid arguments (the message names the value).
    """

    auxiliary_head_class = AuxiliaryHeadCIFAR

    def __init__(
        self,
        channels=36,
        num_classes=10,
        layers=20,
        auxiliary=True,
        genotype=genotype_lib.DARTS_V2,
        drop_path_rate=0.0,
        auxiliary_weight=0.4,
        seed=None,
        **kwargs,
    ):
        super().__init__(
            channels,
            num_classes,
            layers,
            auxiliary,
            genotype,
            drop_path_rate,
            auxiliary_weight,
            seed,
            **kwargs,
        )

    def _make_stem(self):
        stem_channels = STEM_MULTIPLIER * self.channels
        self.stem = ConvBN(3, stem_channels, 3, 1, 1, dtype=self.dtype_policy, name="stem")
        return stem_channels, stem_channels, self.channels, False

    def _build_stem(self, input_shape):
        self.stem.build(input_shape)
        shape = self.stem.compute_output_shape(input_shape)
        return shape, shape

    def _stem(self, images, training):
        s = self.stem(images, training=training)
        return s, s


@keras.saving.register_keras_serializable(package="ilnas_tf")
class NetworkImageNet(_Network):
    """The DARTS ImageNet evaluation network (reference ``model.NetworkImageNet``).

    stem0: conv3x3 stride 2 3 -> C/2 + BN + ReLU + conv3x3 stride 2 C/2 -> C + BN; stem1:
    ReLU + conv3x3 stride 2 C -> C + BN (all padding 1, no bias, PyTorch-symmetric), so
    224x224 images become 56x56 (``s0``) and 28x28 (``s1``) maps. Cells start with
    ``c_prev_prev = c_prev = c_curr = C`` and ``reduction_prev=True``; reductions at
    ``layers // 3`` and ``2 * layers // 3``; the ``AuxiliaryHeadImageNet`` (named
    ``auxiliary_head``) after cell ``2 * layers // 3`` (7x7 maps for 224x224 images); global
    average pooling (the reference's ``AvgPool2d(7)`` on 7x7 maps) and a linear classifier.

    Args:
        channels: Initial channels C (48 in the DARTS paper), even.
        num_classes: Number of classes.
        layers: Number of cells (14 in the paper), at least 3.
        auxiliary: Build the auxiliary head.
        genotype: A ``Genotype`` or anything :func:`resolve_genotype` accepts.
        drop_path_rate: Initial drop-path rate in [0, 1) (the reference's ImageNet default
            is 0).
        auxiliary_weight: Weight of the auxiliary loss in ``compute_loss``.
        seed: Optional int seed of the drop-path noise.
        **kwargs: Base ``keras.Model`` arguments.

    Raises:
        ValueError: On invalid arguments, including an odd ``channels`` (the stem halves it
            and the first cell's ``FactorizedReduce`` needs it even).
    """

    auxiliary_head_class = AuxiliaryHeadImageNet

    def __init__(
        self,
        channels=48,
        num_classes=1000,
        layers=14,
        auxiliary=True,
        genotype=genotype_lib.DARTS_V2,
        drop_path_rate=0.0,
        auxiliary_weight=0.4,
        seed=None,
        **kwargs,
    ):
        channels = validation.check_int("channels", channels, minimum=1)
        if channels % 2:
            raise ValueError(f"NetworkImageNet needs an even channels, got {channels}")
        super().__init__(
            channels,
            num_classes,
            layers,
            auxiliary,
            genotype,
            drop_path_rate,
            auxiliary_weight,
            seed,
            **kwargs,
        )

    def _make_stem(self):
        c = self.channels
        dtype = self.dtype_policy
        self.stem0_conv1 = ConvBN(3, c // 2, 3, 2, 1, dtype=dtype, name="stem0_conv1")
        self.stem0_conv2 = ops.ReLUConvBN(c // 2, c, 3, 2, 1, dtype=dtype, name="stem0_conv2")
        self.stem1 = ops.ReLUConvBN(c, c, 3, 2, 1, dtype=dtype, name="stem1")
        return c, c, c, True

    def _build_stem(self, input_shape):
        self.stem0_conv1.build(input_shape)
        shape = self.stem0_conv1.compute_output_shape(input_shape)
        self.stem0_conv2.build(shape)
        s0_shape = self.stem0_conv2.compute_output_shape(shape)
        self.stem1.build(s0_shape)
        return s0_shape, self.stem1.compute_output_shape(s0_shape)

    def _stem(self, images, training):
        s0 = self.stem0_conv2(self.stem0_conv1(images, training=training), training=training)
        return s0, self.stem1(s0, training=training)


# ----------------------------------------------------------------------------- counting


def count_parameters(model, exclude="auxiliary") -> int:
    """Trainable parameters of ``model``, as the reference's ``count_parameters_in_MB * 1e6``.

    The reference counts ``model.named_parameters()`` whose name does not contain
    ``"auxiliary"``; here a variable is left out when ``exclude`` occurs in its path relative
    to ``model`` (so the model's own name never matters). BN moving statistics and the
    drop-path rate are not trainable and never counted.

    Args:
        model: A built Keras layer or model.
        exclude: Substring of the relative variable paths to leave out; ``None`` or ``""``
            counts everything.

    Returns:
        The number of scalar parameters.

    Raises:
        ValueError: If ``model`` is not built.
    """
    if not getattr(model, "built", False):
        raise ValueError(f"{model!r} is not built; call model.build(input_shape) first")
    prefix = f"{model.path}/" if getattr(model, "path", None) else ""
    total = 0
    for variable in model.trainable_variables:
        path = variable.path
        relative = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        if exclude and exclude in relative:
            continue
        size = 1
        for dim in variable.shape:
            size *= int(dim)
        total += size
    return total
