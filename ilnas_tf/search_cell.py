"""The DARTS search cell, edge by edge: mixed ops and the layer-for-layer reference cell.

Layer for layer this is quark0/darts ``cnn/model_search.py``'s ``MixedOp`` and ``Cell``:

* ``MixedOp``: the weighted sum of every candidate op on one edge; pools are followed by a
  non-affine batch norm. The ``none`` op is skipped: it contributes exactly zero, and its
  weight still receives its gradient through the softmax of the architecture. With
  PC-DARTS' partial channel connections (Xu et al., 2020, ``partial_channels=K > 1``) it is
  that paper's mixed op: the ops see the first ``channels // K`` channels, the rest bypass
  them (max-pooled 2x2 on stride-2 edges) scaled by the edge's weight, and the concatenation
  is channel-shuffled with ``K`` groups.
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

P-DARTS' skip-connect dropout (Chen et al., 2019, "Progressive Differentiable Architecture
Search: Bridging the Depth Gap between Search and Evaluation"): given ``skip_noise=(rate,
noise)`` and a ``salt`` base, the output of every stride-1 ``skip_connect`` goes through
``ops.skip_dropout`` with salt ``salt + e`` on reference edge ``e`` (node-major, the rows of
``weights``), before its mixing weight; the stride-2 ones (``FactorizedReduce``) are untouched.
The masks are a stateless function of the batch (``noise``) and the edge, so both cell
implementations draw the same ones. Without ``skip_noise`` the graph is the dropout-free one.
"""

from __future__ import annotations

import numbers

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


def check_partial_channels(name: str, value, channels: int) -> int:
    """PC-DARTS' K: an integer >= 1 that divides ``channels`` (ValueError naming ``name``)."""
    value = validation.check_int(name, value, minimum=1)
    if channels % value:
        validation.fail(name, value, f"a divisor of the cell's channels ({channels})")
    return value


def check_skip_noise(name: str, skip_noise, partial_channels: int = 1):
    """``None``, or ``(rate, noise)`` for ``ops.skip_dropout`` as a pair of tensors.

    A numeric ``rate`` must lie in [0, 1) and becomes a float64 scalar; ``noise`` becomes an
    int64 tensor (Keras refuses call arguments that mix tensors and Python numbers, so the
    cells and the encoder are always handed tensors). Refuses ``partial_channels > 1`` (not
    supported yet: nothing has settled whether PC-DARTS' bypass channels would be dropped).
    """
    if skip_noise is None:
        return None
    rate, noise = validation.check_sequence(name, skip_noise, length=2)
    if partial_channels > 1:
        validation.fail(
            name,
            skip_noise,
            f"None with partial_channels={partial_channels}: skip-connect dropout is not "
            "supported with partial channel connections yet",
        )
    expected = "a number in [0, 1) or a scalar float tensor"
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        if not 0.0 <= float(rate) < 1.0:  # NaN fails too
            validation.fail(f"{name}[0]", rate, "a number in [0, 1)")
        rate = tf.constant(float(rate), tf.float64)
    elif isinstance(rate, (bool, str, bytes)) or rate is None:
        validation.fail(f"{name}[0]", rate, expected)
    else:
        rate = tf.convert_to_tensor(rate)
    if not rate.dtype.is_floating or rate.shape.rank not in (None, 0):
        validation.fail(f"{name}[0]", rate, expected)
    noise = tf.convert_to_tensor(noise)
    if not noise.dtype.is_integer:
        validation.fail(f"{name}[1]", noise, "an int64 tensor [batch, 3]")
    return rate, tf.cast(noise, tf.int64)


def tensor_skip_noise_arguments(args, kwargs, position: int, partial_channels: int = 1):
    """``(args, kwargs)`` of a layer call with its ``skip_noise`` made tensors.

    Keras refuses a nested call argument that mixes tensors and Python numbers, so a layer
    whose ``call`` takes ``skip_noise=(rate, noise)`` (positional index ``position``) converts
    a numeric rate (``check_skip_noise``) before ``keras.layers.Layer.__call__`` sees it.
    """
    if len(args) > position and args[position] is not None:
        noise = check_skip_noise("skip_noise", args[position], partial_channels)
        args = (*args[:position], noise, *args[position + 1 :])
    elif kwargs.get("skip_noise") is not None:
        kwargs = dict(kwargs)
        kwargs["skip_noise"] = check_skip_noise(
            "skip_noise", kwargs["skip_noise"], partial_channels
        )
    return args, kwargs


def check_even_spatial(name: str, shape, partial_channels: int):
    """Checks that ``shape`` (NHWC) has an even height and width where it is known.

    PC-DARTS' stride-2 edges max-pool their bypass channels 2x2 with stride 2, which matches
    the ``ceil(size / 2)`` output of their ops only for even sizes (the reference needs it
    too). Raises the package's ``ValueError`` naming ``name`` and the shape.
    """
    height, width = shape[1], shape[2]
    if any(size is not None and int(size) % 2 for size in (height, width)):
        validation.fail(
            name,
            tuple(shape),
            f"an even height and width: with partial_channels={partial_channels} the stride-2 "
            "edges of a reduction cell max-pool their bypass channels 2x2 with stride 2",
        )


@keras.saving.register_keras_serializable(package="ilnas_tf")
class MixedOp(keras.layers.Layer):
    """Weighted sum of every candidate op on one edge; pools are followed by a non-affine BN.

    With ``partial_channels`` K > 1 this is the PC-DARTS mixed op (Xu et al., 2020, "PC-DARTS:
    Partial Channel Connections for Memory-Efficient Architecture Search"): with ``w`` the
    edge's row of mixing weights and ``C' = channels // K``,

        y = sum_o w[o] * op_o(x[..., :C'])          # the ops are built for C' channels
        b = x[..., C':], max-pooled 2x2 (stride 2) on a stride-2 edge
        out = channel_shuffle(concat([y, sum(w) * b]), K)

    ``sum(w)`` is the edge's weight: 1 for a softmax over the ops (DARTS), the edge-normalised
    beta for PC-DARTS, whose mixing weights are softmax(alpha) times beta. With K = 1 the
    edge is the plain weighted sum (no slicing, shuffle or row sum).

    Args:
      channels: input and output channels.
      stride: 1, or 2 on the input edges of a reduction cell.
      primitives: the edge's candidate ops; ``weights[j]`` weights ``primitives[j]``.
      partial_channels: K, ``1`` (default, DARTS) or a divisor of ``channels``. On a stride-2
        edge with K > 1 the input's height and width must be even, and a ``skip_connect``
        candidate (a ``FactorizedReduce``) needs an even ``channels // K``.

    ``forward``/``call`` take ``skip_noise=(rate, noise)`` and ``salt`` (the edge's own, a
    Python int) for P-DARTS' dropout after a stride-1 ``skip_connect``
    (``ops.skip_dropout``); ``None`` (default): no dropout.
    """

    def __init__(
        self,
        channels,
        stride,
        primitives=genotype_lib.PRIMITIVES,
        partial_channels=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.stride = validation.check_int("stride", stride, minimum=1, maximum=2)
        self.primitives = check_primitives("primitives", primitives)
        self.partial_channels = check_partial_channels(
            "partial_channels", partial_channels, self.channels
        )
        self.op_channels = self.channels // self.partial_channels
        """Channels the candidate ops are built for (``channels // partial_channels``)."""
        if (
            self.partial_channels > 1
            and self.stride == 2
            and "skip_connect" in self.primitives
            and self.op_channels % 2
        ):
            validation.fail(
                "partial_channels",
                partial_channels,
                f"a divisor of channels={self.channels} leaving an even number of op channels "
                f"(got {self.op_channels}): a stride-2 skip_connect is a FactorizedReduce, "
                "which needs an even channel count",
            )
        self.active = [i for i, p in enumerate(self.primitives) if p != "none"]
        self.candidates = [
            ops.make_op(
                self.primitives[i],
                self.op_channels,
                stride,
                False,
                dtype=self.dtype_policy,
                name=self.primitives[i],
            )
            for i in self.active
        ]

    def build(self, input_shape):
        if self.partial_channels == 1:
            for op in self.candidates:
                op.build(input_shape)
            return
        if input_shape[-1] is not None and input_shape[-1] != self.channels:
            raise ValueError(
                f"MixedOp '{self.name}' expects {self.channels} input channels, got input "
                f"shape {tuple(input_shape)}"
            )
        if self.stride == 2:
            check_even_spatial(
                f"MixedOp '{self.name}' input shape", input_shape, self.partial_channels
            )
        op_shape = tuple(input_shape[:-1]) + (self.op_channels,)
        for op in self.candidates:
            op.build(op_shape)

    @property
    def kernels(self):
        return [k for op in self.candidates for k in op.kernels]

    def _op_sum(self, kernels, x, weights, skip_noise=None, salt=0):
        """``sum_o weights[o] * op_o(x)`` over the candidates (zeros when only ``none``)."""
        outputs, offset = [], 0
        for index, op in zip(self.active, self.candidates):
            count = len(op.kernel_specs())
            y = op.forward(kernels[offset : offset + count], x)
            offset += count
            if "pool" in self.primitives[index]:
                y = ops.batch_norm(y)
            elif skip_noise is not None and isinstance(op, ops.Identity):
                y = ops.skip_dropout(y, skip_noise[0], skip_noise[1], salt)
            outputs.append(weights[index] * y)
        if not outputs:  # only 'none': exactly zero
            return tf.zeros_like(x if self.stride == 1 else x[:, ::2, ::2, :])
        return tf.add_n(outputs)

    def forward(self, kernels, x, weights, skip_noise=None, salt=0):
        """Pure forward: ``kernels`` in ``self.kernels`` order, ``weights`` one row of mixing weights.

        ``skip_noise``: ``None`` or ``(rate, noise)``; with it a stride-1 ``skip_connect``'s
        output is ``ops.skip_dropout(x, rate, noise, salt)``.
        """
        skip_noise = check_skip_noise("skip_noise", skip_noise, self.partial_channels)
        if self.partial_channels == 1:
            return self._op_sum(kernels, x, weights, skip_noise, salt)
        y = self._op_sum(kernels, x[..., : self.op_channels], weights)
        bypass = x[..., self.op_channels :]
        if self.stride == 2:
            check_even_spatial(f"MixedOp '{self.name}' input shape", x.shape, self.partial_channels)
            bypass = ops.max_pool_2x2(bypass)
        bypass = tf.reduce_sum(weights) * bypass
        return ops.channel_shuffle(tf.concat([y, bypass], axis=-1), self.partial_channels)

    def __call__(self, *args, **kwargs):
        args, kwargs = tensor_skip_noise_arguments(args, kwargs, 2, self.partial_channels)
        return super().__call__(*args, **kwargs)

    def call(self, x, weights, skip_noise=None, salt=0):
        return self.forward([k.value for k in self.kernels], x, weights, skip_noise, salt)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            stride=self.stride,
            primitives=list(self.primitives),
            partial_channels=self.partial_channels,
        )
        return config


class SearchCellBase(keras.layers.Layer):
    """What the per-edge ``SearchCell`` and the edge-batched ``FusedSearchCell`` share.

    Validates and stores the hyperparameters, builds the two preprocessing ops, and provides
    ``call`` and ``get_config``. Subclasses define ``kernels``, ``build`` and the pure
    ``forward(kernels, s0, s1, weights, skip_noise=None, salt=0)``: with ``skip_noise=(rate,
    noise)`` the stride-1 ``skip_connect`` of reference edge ``e`` is followed by
    ``ops.skip_dropout(..., rate, noise, salt + e)`` (P-DARTS); ``None``: no dropout (the
    dropout-free graph).

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
      partial_channels: PC-DARTS' partial channel connections (Xu et al., 2020, "PC-DARTS:
        Partial Channel Connections for Memory-Efficient Architecture Search"), their K:
        ``1`` (default, DARTS) or a divisor of ``channels``. Each edge then sends only its
        input's first ``channels // partial_channels`` channels through its ops (built for
        that many channels); the other channels bypass them (max-pooled 2x2 with stride 2 on
        the stride-2 edges of a reduction cell), are concatenated after the ops' weighted
        sum, and the result is channel-shuffled with ``partial_channels`` groups. The bypass
        is scaled by the edge's weight, the *sum of its row of mixing weights*: 1 for a
        softmax over ops (DARTS), the edge-normalised beta for PC-DARTS, whose mixing weights
        are softmax(alpha) times beta (``pc_darts.EdgeNormalizedArchitecture``).
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
        partial_channels=1,
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
        self.partial_channels = check_partial_channels(
            "partial_channels", partial_channels, self.channels
        )
        self.op_channels = self.channels // self.partial_channels
        """Channels the candidate ops of every edge are built for (``channels`` / K)."""
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

    def check_partial_channel_shape(self, shape):
        """Raises a ``ValueError`` if a reduction cell with K > 1 gets an odd height or width.

        ``shape``: the NHWC shape of the cell's states (that of ``s1``; ``s0`` is brought to
        it by the preprocessing). Unknown sizes pass. A no-op for K = 1 or a normal cell.
        """
        if self.partial_channels > 1 and self.reduction:
            check_even_spatial(
                f"{type(self).__name__} '{self.name}' input shape", shape, self.partial_channels
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
            self.partial_channels,
        )

    def forward(self, kernels, s0, s1, weights, skip_noise=None, salt=0):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        args, kwargs = tensor_skip_noise_arguments(args, kwargs, 3, self.partial_channels)
        return super().__call__(*args, **kwargs)

    def call(self, s0, s1, weights, skip_noise=None, salt=0):
        kernels = [k.value for k in self.kernels]
        if skip_noise is None:
            return self.forward(kernels, s0, s1, weights)
        return self.forward(kernels, s0, s1, weights, skip_noise=skip_noise, salt=salt)

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
            partial_channels=self.partial_channels,
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
                        partial_channels=self.partial_channels,
                        dtype=dtype,
                        name=f"edge_{source}_{node + 2}",
                    )
                )
                index += 1

    def build(self, s0_shape, s1_shape=None, weights_shape=None):
        # Keras matches build's arguments to call's (s0, s1, weights) by name.
        shape0 = s0_shape
        shape1 = s0_shape if s1_shape is None else s1_shape
        self.check_partial_channel_shape(shape1)
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

    def forward(self, kernels, s0, s1, weights, skip_noise=None, salt=0):
        """Pure forward pass; ``kernels`` in ``self.kernels`` order, ``weights`` (edges, ops).

        ``skip_noise``/``salt``: P-DARTS' skip-connect dropout (see ``SearchCellBase``).
        """
        skip_noise = check_skip_noise("skip_noise", skip_noise, self.partial_channels)
        salt = validation.check_int("salt", salt)
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
                edge_kernels = kernels[offset : offset + count]
                if skip_noise is None:
                    terms.append(edge.forward(edge_kernels, states[source], weights[edge_index]))
                else:
                    terms.append(
                        edge.forward(
                            edge_kernels,
                            states[source],
                            weights[edge_index],
                            skip_noise,
                            salt + edge_index,
                        )
                    )
                offset += count
                edge_index += 1
            states.append(tf.add_n(terms))
        return tf.concat(states[-self.multiplier :], axis=-1)
