"""The DARTS search cell, edge by edge: mixed ops and the layer-for-layer reference cell.

Layer for layer this is quark0/darts ``cnn/model_search.py``'s ``MixedOp`` and ``Cell``:

* ``MixedOp``: the weighted sum of every candidate op on one edge; pools are followed by a
  non-affine batch norm. The ``none`` op is skipped: it contributes exactly zero, and its
  weight still receives its gradient through the softmax of the architecture.
* ``SearchCellBase``: what the per-edge ``SearchCell`` and the edge-batched
  ``fused_cell.FusedSearchCell`` share (hyperparameters, the two preprocessing ops, ``call``,
  ``get_config``).
* ``SearchCell``: 2 preprocessed inputs, ``steps`` nodes, every edge a ``MixedOp``, output the
  concatenation of the last ``multiplier`` nodes.

Every cell may take per-edge candidate-op subsets (``edge_primitives``, P-DARTS prunes the
candidates between its stages): edge ``e`` then holds the ops ``edge_primitives[e]`` and
column ``j`` of its row of mixing weights weights op ``edge_primitives[e][j]``.

A cell's forward pass is a pure function of (kernels, inputs, mixing weights)
(``forward``), so a supernet can be evaluated at substituted weights with
``stateless_call`` under nested ``GradientTape``s.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import ops, validation

STEPS = 4
MULTIPLIER = 4


def check_primitives(name: str, primitives) -> tuple[str, ...]:
    """A non-empty sequence of unique candidate-op names (keys of ``ops.OPS``), as a tuple."""
    primitives = validation.check_sequence(name, primitives, min_length=1)
    unknown = [p for p in primitives if p not in ops.OPS]
    if unknown:
        validation.fail(name, primitives, f"names from {list(ops.OPS)} (unknown: {unknown})")
    if len(set(primitives)) != len(primitives):
        validation.fail(name, primitives, "unique op names (found duplicates)")
    return primitives


@keras.saving.register_keras_serializable(package="ilnas_tf")
class MixedOp(keras.layers.Layer):
    """Weighted sum of every candidate op on one edge; pools are followed by a non-affine BN.

    Args:
      channels: input and output channels.
      stride: 1, or 2 on the input edges of a reduction cell.
      primitives: the edge's candidate ops; ``weights[j]`` weights ``primitives[j]``.
    """

    def __init__(self, channels, stride, primitives=genotype_lib.PRIMITIVES, **kwargs):
        super().__init__(**kwargs)
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.stride = validation.check_int("stride", stride, minimum=1, maximum=2)
        self.primitives = check_primitives("primitives", primitives)
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
        if not outputs:  # only 'none': exactly zero
            return tf.zeros_like(x if self.stride == 1 else x[:, ::2, ::2, :])
        return tf.add_n(outputs)

    def call(self, x, weights):
        return self.forward([k.value for k in self.kernels], x, weights)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride, primitives=list(self.primitives))
        return config


class SearchCellBase(keras.layers.Layer):
    """What the per-edge ``SearchCell`` and the edge-batched ``FusedSearchCell`` share.

    Validates and stores the hyperparameters, builds the two preprocessing ops, and provides
    ``call`` and ``get_config``. Subclasses define ``kernels``, ``build`` and the pure
    ``forward(kernels, s0, s1, weights)``.

    Args:
      c_prev_prev, c_prev: channels of the two inputs (outputs of the two previous cells).
      channels: channels of every node.
      reduction: whether this cell halves the spatial size (stride 2 on input edges).
      reduction_prev: whether the previous cell was a reduction (input 0 is then
        FactorizedReduce-d to match the spatial size).
      primitives, steps, multiplier: candidate ops, intermediate nodes, nodes concatenated.
      edge_primitives: ``None`` (every edge holds all ``primitives``) or ``num_edges``
        equal-length sequences of names from ``primitives``: the ops of each edge (reference,
        node-major edge order). The mixing weights are then ``(num_edges, n_ops)``, column
        ``j`` of edge ``e`` weighting op ``edge_primitives[e][j]``.
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
        edge_primitives=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.c_prev_prev = validation.check_int("c_prev_prev", c_prev_prev, minimum=1)
        self.c_prev = validation.check_int("c_prev", c_prev, minimum=1)
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        self.primitives = check_primitives("primitives", primitives)
        self.steps = validation.check_int("steps", steps, minimum=1)
        self.multiplier = validation.check_int("multiplier", multiplier, minimum=1)
        if self.multiplier > self.steps:
            validation.fail("multiplier", multiplier, f"an integer <= steps={self.steps}")
        self.edge_primitives = genotype_lib.check_cell_edge_primitives(
            "edge_primitives", edge_primitives, self.primitives, self.steps
        )
        num_edges = genotype_lib.num_cell_edges(self.steps)
        self.edge_ops = self.edge_primitives or (self.primitives,) * num_edges
        """``edge_ops[e]``: the ops of edge ``e``, in the order of its mixing-weight columns."""
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
        """The hyperparameters that determine the cell's function and kernel shapes."""
        return (
            self.c_prev_prev,
            self.c_prev,
            self.channels,
            self.reduction,
            self.reduction_prev,
            self.primitives,
            self.steps,
            self.multiplier,
            self.edge_primitives,
        )

    def forward(self, kernels, s0, s1, weights):
        raise NotImplementedError

    def call(self, s0, s1, weights):
        return self.forward([k.value for k in self.kernels], s0, s1, weights)

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
            edge_primitives=(
                None if self.edge_primitives is None else [list(e) for e in self.edge_primitives]
            ),
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class SearchCell(SearchCellBase):
    """A DARTS search cell: 2 preprocessed inputs, ``steps`` nodes, concat of the last ``multiplier``.

    Every edge is a ``MixedOp`` over its ops (the layer-for-layer reference). Arguments: see
    ``SearchCellBase``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dtype = self.dtype_policy
        self.edges = []
        index = 0
        for node in range(self.steps):
            for source in range(2 + node):
                stride = 2 if self.reduction and source < 2 else 1
                self.edges.append(
                    MixedOp(
                        self.channels,
                        stride,
                        self.edge_ops[index],
                        dtype=dtype,
                        name=f"edge_{source}_{node + 2}",
                    )
                )
                index += 1

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
