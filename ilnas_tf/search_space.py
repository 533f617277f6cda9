"""The DARTS supernet: architecture parameters, mixed ops, search cells, encoder and heads.

Layer for layer this is quark0/darts ``cnn/model_search.py`` split the way interleaving
learning needs it:

* ``Architecture`` holds the architecture parameters A (``alpha_normal``, ``alpha_reduce``,
  shape ``(14, len(primitives))``, initialised as 1e-3 * N(0, 1)). It lives outside every
  encoder, so K learners can each own a ``SearchEncoder`` (their weights W_k) while sharing
  one architecture. Subclasses may add parameters (e.g. PC-DARTS edge betas) by overriding
  ``edge_weights``.
* ``SearchEncoder`` (stem -> cells -> global average pooling) takes the *mixing weights*
  (softmax of the alphas) as call arguments, so it can be evaluated at substituted weights
  with ``encoder.stateless_call(weights, [], images, weights_normal, weights_reduce)`` under
  nested ``GradientTape``s, with A differentiable through the mixing weights.
* ``ClassifierHead`` is one Dense layer per task (H_k).

Graph size: a cell's forward pass is a pure function of (kernels, inputs, mixing weights)
(``SearchCell.forward``). With ``trace_cells=True`` it is wrapped in one ``tf.function`` per
distinct cell specification and input signature, shared by every cell instance with that
spec, so the outer graph holds one call op per cell instead of thousands of ops, and
gradients of those calls (first and second order) are built once per distinct cell.
Measured on TF 2.21 / 2 CPU cores (C=4, 3 cells, batch 4, exact 2nd-order DARTS step,
``/tmp``-free reproduction in ``tools/benchmark_compile.py``): inlined cells trace in 31 s and
first-call in 31 s; traced cells trace in 59 s and first-call in 46 s (steady step 0.45 s vs
0.58 s). Building gradient functions of nested calls costs more than it saves, so the
default is ``trace_cells=False``.
The ``none`` op is skipped in the mixed op: it contributes exactly zero, and its alpha still
receives its gradient through the softmax.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import ops

STEPS = 4
MULTIPLIER = 4
STEM_MULTIPLIER = 3


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell with ``steps`` intermediate nodes (14 for 4 nodes)."""
    return sum(2 + i for i in range(steps))


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3``."""
    return (layers // 3, 2 * layers // 3)


def _check_primitives(primitives) -> tuple[str, ...]:
    primitives = tuple(primitives)
    unknown = [p for p in primitives if p not in ops.OPS]
    if unknown or not primitives:
        raise ValueError(
            f"unknown primitives {unknown or primitives}; expected names from {list(ops.OPS)}"
        )
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"primitives contain duplicates: {list(primitives)}")
    return primitives


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Architecture(keras.layers.Layer):
    """Architecture parameters A shared by all learners.

    Args:
      primitives: candidate op names (default: the DARTS ``PRIMITIVES``).
      steps: intermediate nodes per cell.
      init_scale: alphas are initialised as ``init_scale * N(0, 1)``.
      multiplier: nodes concatenated into a cell's output, for the derived genotype (default:
        all ``steps`` nodes, as DARTS' 4 of 4).
    """

    def __init__(
        self,
        primitives=genotype_lib.PRIMITIVES,
        steps=STEPS,
        init_scale=1e-3,
        multiplier=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.primitives = _check_primitives(primitives)
        self.steps = ops._check_positive_int("steps", steps)
        self.multiplier = self.steps if multiplier is None else int(multiplier)
        if not 1 <= self.multiplier <= self.steps:
            raise ValueError(f"multiplier must be in [1, steps={self.steps}], got {multiplier!r}")
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        self.init_scale = float(init_scale)
        shape = (num_edges(self.steps), len(self.primitives))
        # One initialiser instance per variable: a shared instance repeats its values.
        self.alpha_normal = self.add_weight(
            name="alpha_normal",
            shape=shape,
            initializer=keras.initializers.RandomNormal(stddev=self.init_scale),
        )
        self.alpha_reduce = self.add_weight(
            name="alpha_reduce",
            shape=shape,
            initializer=keras.initializers.RandomNormal(stddev=self.init_scale),
        )
        self.built = True

    @property
    def alphas(self):
        return [self.alpha_normal, self.alpha_reduce]

    @staticmethod
    def mixing_weights(alpha_normal, alpha_reduce):
        """Softmax over ops on every edge: the weights a ``SearchEncoder`` is called with."""
        return tf.nn.softmax(alpha_normal, axis=-1), tf.nn.softmax(alpha_reduce, axis=-1)

    def edge_weights(self):
        """Per-edge multipliers used when deriving the genotype (None: all ones)."""
        return None, None

    def genotype(self) -> genotype_lib.Genotype:
        """The discrete architecture by the DARTS rule (see ``genotype.derive_genotype``)."""
        normal_edges, reduce_edges = self.edge_weights()
        return genotype_lib.derive_genotype(
            np.asarray(self.alpha_normal.numpy()),
            np.asarray(self.alpha_reduce.numpy()),
            primitives=self.primitives,
            steps=self.steps,
            multiplier=self.multiplier,
            edge_weight_normal=normal_edges,
            edge_weight_reduce=reduce_edges,
        )

    def call(self, inputs=None):
        return self.mixing_weights(self.alpha_normal.value, self.alpha_reduce.value)

    def get_config(self):
        config = super().get_config()
        config.update(
            primitives=list(self.primitives),
            steps=self.steps,
            init_scale=self.init_scale,
            multiplier=self.multiplier,
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class MixedOp(keras.layers.Layer):
    """Weighted sum of every candidate op on one edge; pools are followed by a non-affine BN."""

    def __init__(self, channels, stride, primitives=genotype_lib.PRIMITIVES, **kwargs):
        super().__init__(**kwargs)
        self.channels = ops._check_positive_int("channels", channels)
        self.stride = ops._check_stride(stride)
        self.primitives = _check_primitives(primitives)
        self.active = [i for i, p in enumerate(self.primitives) if p != "none"]
        self.candidates = [
            ops.make_op(
                self.primitives[i],
                channels,
                stride,
                False,
                dtype=self.dtype_policy,
                name=self.primitives[i],
            )
            for i in self.active
        ]

    def build(self, input_shape):
        for op in self.candidates:
            op.build(input_shape)

    @property
    def kernels(self):
        return [k for op in self.candidates for k in op.kernels]

    def forward(self, kernels, x, weights):
        """Pure forward: ``kernels`` in ``self.kernels`` order, ``weights`` one row of mixing weights."""
        outputs, offset = [], 0
        for index, op in zip(self.active, self.candidates):
            count = len(op.kernel_specs())
            y = op.forward(kernels[offset : offset + count], x)
            offset += count
            if "pool" in self.primitives[index]:
                y = ops.batch_norm(y)
            outputs.append(weights[index] * y)
        return tf.add_n(outputs)

    def call(self, x, weights):
        return self.forward([k.value for k in self.kernels], x, weights)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride, primitives=list(self.primitives))
        return config


_TRACED_CELLS: dict = {}


class SearchCellBase(keras.layers.Layer):
    """What the per-edge ``SearchCell`` and the edge-batched ``FusedSearchCell`` share.

    Validates and stores the hyperparameters, builds the two preprocessing ops, and provides
    ``call`` (optionally through one shared ``tf.function`` per distinct cell, see the module
    docstring) and ``get_config``. Subclasses define ``kernels``, ``build`` and the pure
    ``forward(kernels, s0, s1, weights)``.

    Args:
      c_prev_prev, c_prev: channels of the two inputs (outputs of the two previous cells).
      channels: channels of every node.
      reduction: whether this cell halves the spatial size (stride 2 on input edges).
      reduction_prev: whether the previous cell was a reduction (input 0 is then
        FactorizedReduce-d to match the spatial size).
      primitives, steps, multiplier: candidate ops, intermediate nodes, nodes concatenated.
      trace_cells: share one ``tf.function`` per distinct cell spec (see module docstring).
    """

    def __init__(
        self,
        c_prev_prev,
        c_prev,
        channels,
        reduction,
        reduction_prev,
        primitives=genotype_lib.PRIMITIVES,
        steps=STEPS,
        multiplier=MULTIPLIER,
        trace_cells=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.c_prev_prev = ops._check_positive_int("c_prev_prev", c_prev_prev)
        self.c_prev = ops._check_positive_int("c_prev", c_prev)
        self.channels = ops._check_positive_int("channels", channels)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        self.primitives = _check_primitives(primitives)
        self.steps = ops._check_positive_int("steps", steps)
        self.multiplier = ops._check_positive_int("multiplier", multiplier)
        if self.multiplier > self.steps:
            raise ValueError(f"multiplier ({multiplier}) must not exceed steps ({steps})")
        self.trace_cells = bool(trace_cells)
        dtype = self.dtype_policy
        if self.reduction_prev:
            self.preprocess0 = ops.FactorizedReduce(
                c_prev_prev, channels, affine=False, dtype=dtype, name="preprocess0"
            )
        else:
            self.preprocess0 = ops.ReLUConvBN(
                c_prev_prev, channels, 1, 1, 0, affine=False, dtype=dtype, name="preprocess0"
            )
        self.preprocess1 = ops.ReLUConvBN(
            c_prev, channels, 1, 1, 0, affine=False, dtype=dtype, name="preprocess1"
        )

    @property
    def spec(self):
        return (
            self.c_prev_prev,
            self.c_prev,
            self.channels,
            self.reduction,
            self.reduction_prev,
            self.primitives,
            self.steps,
            self.multiplier,
        )

    def _trace_key(self):
        return (type(self).__name__, self.spec, self.dtype_policy.name)

    def _forward_function(self):
        key = self._trace_key()
        if key not in _TRACED_CELLS:
            _TRACED_CELLS[key] = tf.function(self.forward, autograph=False)
        return _TRACED_CELLS[key]

    def forward(self, kernels, s0, s1, weights):
        raise NotImplementedError

    def call(self, s0, s1, weights):
        kernels = [k.value for k in self.kernels]
        forward = self._forward_function() if self.trace_cells else self.forward
        return forward(kernels, s0, s1, weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            c_prev_prev=self.c_prev_prev,
            c_prev=self.c_prev,
            channels=self.channels,
            reduction=self.reduction,
            reduction_prev=self.reduction_prev,
            primitives=list(self.primitives),
            steps=self.steps,
            multiplier=self.multiplier,
            trace_cells=self.trace_cells,
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class SearchCell(SearchCellBase):
    """A DARTS search cell: 2 preprocessed inputs, ``steps`` nodes, concat of the last ``multiplier``.

    Every edge is a ``MixedOp`` (the layer-for-layer reference). Arguments: see
    ``SearchCellBase``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dtype = self.dtype_policy
        self.edges = []
        for node in range(self.steps):
            for source in range(2 + node):
                stride = 2 if self.reduction and source < 2 else 1
                self.edges.append(
                    MixedOp(
                        self.channels,
                        stride,
                        self.primitives,
                        dtype=dtype,
                        name=f"edge_{source}_{node + 2}",
                    )
                )

    def build(self, s0_shape, s1_shape=None, weights_shape=None):
        # Keras matches build's arguments to call's (s0, s1, weights) by name.
        shape0 = s0_shape
        shape1 = s0_shape if s1_shape is None else s1_shape
        self.preprocess0.build(shape0)
        self.preprocess1.build(shape1)
        height = shape1[1]
        edge_shape = (shape1[0], height, shape1[2], self.channels)
        for edge in self.edges:
            edge.build(edge_shape)

    @property
    def kernels(self):
        result = list(self.preprocess0.kernels) + list(self.preprocess1.kernels)
        for edge in self.edges:
            result.extend(edge.kernels)
        return result

    def forward(self, kernels, s0, s1, weights):
        """Pure forward pass; ``kernels`` in ``self.kernels`` order, ``weights`` (edges, ops)."""
        n0 = len(self.preprocess0.kernel_specs())
        n1 = len(self.preprocess1.kernel_specs())
        states = [
            self.preprocess0.forward(kernels[:n0], s0),
            self.preprocess1.forward(kernels[n0 : n0 + n1], s1),
        ]
        offset, edge_index = n0 + n1, 0
        for node in range(self.steps):
            terms = []
            for source in range(2 + node):
                edge = self.edges[edge_index]
                count = len(edge.kernels)
                terms.append(
                    edge.forward(
                        kernels[offset : offset + count], states[source], weights[edge_index]
                    )
                )
                offset += count
                edge_index += 1
            states.append(tf.add_n(terms))
        return tf.concat(states[-self.multiplier :], axis=-1)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class SearchEncoder(keras.layers.Layer):
    """Stem (3x3 conv to ``3 * channels`` + BN) -> ``layers`` search cells -> global average pool.

    Call as ``encoder(images, weights_normal, weights_reduce)``; returns ``(batch, features)``
    with ``features == encoder.output_channels``. The stem BN is affine (as in the
    reference); every other BN is non-affine. All BNs use batch statistics (see ``ops``).
    ``cell_impl="fused"`` (default) builds ``fused_cell.FusedSearchCell``s: the same function
    and parameter count as the per-edge ``SearchCell``s (``cell_impl="per_edge"``, the
    layer-for-layer reference) with batched edges, ~6x fewer graph ops and ~6x less compile
    time (see ``tools/benchmark_compile.py``).
    """

    def __init__(
        self,
        channels=16,
        layers=8,
        primitives=genotype_lib.PRIMITIVES,
        steps=STEPS,
        multiplier=MULTIPLIER,
        stem_multiplier=STEM_MULTIPLIER,
        input_channels=3,
        trace_cells=False,
        cell_impl="fused",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell_impl not in ("per_edge", "fused"):
            raise ValueError(f"cell_impl must be 'per_edge' or 'fused', got {cell_impl!r}")
        self.cell_impl = cell_impl
        if cell_impl == "fused":
            from ilnas_tf.fused_cell import FusedSearchCell as cell_class  # avoids an import cycle
        else:
            cell_class = SearchCell
        self.channels = ops._check_positive_int("channels", channels)
        self.num_layers = ops._check_positive_int("layers", layers)
        self.primitives = _check_primitives(primitives)
        self.steps = ops._check_positive_int("steps", steps)
        self.multiplier = ops._check_positive_int("multiplier", multiplier)
        self.stem_multiplier = ops._check_positive_int("stem_multiplier", stem_multiplier)
        self.input_channels = ops._check_positive_int("input_channels", input_channels)
        self.trace_cells = bool(trace_cells)
        c_curr = self.stem_multiplier * self.channels
        self.stem_channels = c_curr
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, self.channels
        self.cells = []
        reduction_prev = False
        reductions = reduction_layers(self.num_layers)
        for index in range(self.num_layers):
            reduction = index in reductions
            if reduction:
                c_curr *= 2
            self.cells.append(
                cell_class(
                    c_prev_prev,
                    c_prev,
                    c_curr,
                    reduction,
                    reduction_prev,
                    self.primitives,
                    self.steps,
                    self.multiplier,
                    self.trace_cells,
                    dtype=self.dtype_policy,
                    name=f"cell_{index}",
                )
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, self.multiplier * c_curr
        self.output_channels = c_prev

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.input_channels:
            raise ValueError(
                f"SearchEncoder expects images with {self.input_channels} channels, got shape {tuple(input_shape)}"
            )
        self.stem_kernel = self.add_weight(
            name="stem_kernel",
            shape=(3, 3, self.input_channels, self.stem_channels),
            initializer=ops.torch_uniform(9 * self.input_channels),
        )
        self.stem_gamma = self.add_weight(
            name="stem_gamma", shape=(self.stem_channels,), initializer="ones"
        )
        self.stem_beta = self.add_weight(
            name="stem_beta", shape=(self.stem_channels,), initializer="zeros"
        )
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        s0 = s1 = (batch, height, width, self.stem_channels)
        for cell in self.cells:
            cell.build(s0, s1)
            if cell.reduction:
                height = None if height is None else (height + 1) // 2
                width = None if width is None else (width + 1) // 2
            s0, s1 = s1, (batch, height, width, cell.multiplier * cell.channels)

    def call(self, images, weights_normal, weights_reduce):
        s = ops.conv2d(images, self.stem_kernel.value, 1, 1)
        s0 = s1 = ops.batch_norm(s, self.stem_gamma.value, self.stem_beta.value)
        for cell in self.cells:
            weights = weights_reduce if cell.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, weights)
        return tf.reduce_mean(s1, axis=[1, 2])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            layers=self.num_layers,
            primitives=list(self.primitives),
            steps=self.steps,
            multiplier=self.multiplier,
            stem_multiplier=self.stem_multiplier,
            input_channels=self.input_channels,
            trace_cells=self.trace_cells,
            cell_impl=self.cell_impl,
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class ClassifierHead(keras.layers.Layer):
    """A task head H_k: one Dense layer from encoder features to ``num_classes`` logits."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = ops._check_positive_int("num_classes", num_classes)
        self.dense = None

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        init = ops.torch_uniform(fan_in)
        self.dense = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=init,
            bias_initializer=ops.torch_uniform(fan_in),
            dtype=self.dtype_policy,
            name="classifier",
        )
        self.dense.build(input_shape)

    def call(self, features):
        return self.dense(features)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config
