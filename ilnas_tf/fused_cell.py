"""A DARTS search cell with its edges batched: ``SearchCell``'s function in far fewer graph ops.

``search_cell.SearchCell`` builds every candidate op of every edge as its own Keras layer (14
edges x 7 ops per cell), so the graph of an exact second-order hypergradient is large and slow
to compile. ``FusedSearchCell`` has the same parameters, initialised the same way, and computes
the same function (to float64 round-off), but evaluates the edges in *waves* of stacked
tensors (measurements: ``docs/benchmarks.md``):

* wave 0: every edge leaving state 0 or 1 (``2 * steps`` edges, the stride-2 edges of a
  reduction cell); wave ``w > 0``: the ``steps - w`` edges leaving node ``w - 1`` (state
  ``w + 1``), which is complete once waves ``0 .. w - 1`` are summed. Inside a wave, edges
  are ordered source-major (``e = s * M + m``: source ``s``, target node ``w + m``); the
  kernels are stored in this *wave order* (``FusedSearchCell.wave_order`` maps it to the
  reference, node-major edge order of ``weights``).
* Both preprocessing ops share one batch norm; their outputs (states 0 and 1) are only ever
  the input of wave 0, so they are kept stacked.
* One ReLU per source state. The first depthwise convolution of every conv op of all edges of
  a wave is one ``depthwise_conv2d`` per kernel-size group (channel multiplier = edges per
  source x op types, so the sources are never tiled; see ``depthwise_grouping``), likewise the
  second depthwise convolution of the separable convs. The pointwise convolutions of all edges
  and op types of a stage are one batched ``matmul`` (faster on CPU than ``einsum``, which
  is also much slower to differentiate). All batch norms of a stage (conv outputs, pools,
  ``FactorizedReduce``) are one ``ops.batch_norm`` over the concatenated channels (statistics
  are per channel, so this equals separate batch norms). That leaves two batch norms per wave,
  the minimum: each node depends on the previous one through two of them.
* Pools (+ their batch-stat BN) and the stride-1 ``skip_connect`` depend only on the source,
  so they are computed once per source and shared by all edges leaving it (identical inputs
  give identical outputs and batch statistics: exact).
* The weighted sum over ops, and over the edges into each node, is a plain ``matmul``
  ``[N*H*W*C, K] @ [K, M]`` per stage: the K op outputs of a wave (channels laid out (c, k))
  against a matrix gathered once per cell from ``weights`` (zero where an output does not
  feed target node ``wave + m``).

Channel layouts (NHWC tensors, channels factorised, outermost first): wave input ``(c, s)``;
stage-1 depthwise outputs ``(c, s, m, g)``; separable convs between the stages ``(t, c, e)``;
outputs entering the weighted sums ``(c, k)``.

Parameters (``kernels`` order; ``E`` = all edges in wave order, ``E0 = 2 * steps``):
``preprocess0``/``preprocess1`` kernels (as ``SearchCell``), then ``<op>_depthwise1``
``[k, k, C, E]`` for every conv op (``sep_conv_*``, ``dil_conv_*``; undilated taps),
``pointwise1`` ``[T1, E, C, C]`` (conv ops in that order), ``<op>_depthwise2`` for the
``sep_conv_*`` ops, ``pointwise2`` ``[T2, E, C, C]``, and in a reduction cell
``factorized_reduce`` ``[2, E0, C, C // 2]`` (the two 1x1 kernels of each stride-2
``skip_connect``). Every slice is initialised like ``ops.py`` (PyTorch's default uniform with
the per-edge fan-in).

Per-edge op subsets (``edge_primitives``): an op then lives on the edges ``op_edges[op]``
(wave positions) only, and only those kernels exist: ``<op>_depthwise*`` are
``[k, k, C, len(op_edges[op])]``, ``factorized_reduce`` ``[2, len(reduce_skip_edges), C,
C // 2]``, and, unless every conv op is on every edge, ``pointwise*`` are ``[P, C, C]`` with
``P`` the (op, edge) pairs, op-major. The forward pass scatters them into the dense layout
above with zero kernels elsewhere and gathers each (op, edge)'s mixing weight from its
edge's column of that op (zero where the edge lacks it), so absent pairs contribute exactly
zero; they are still computed (the dense layout's cost, whatever the subsets).

Partial channel connections (PC-DARTS (Xu et al., 2020), ``partial_channels`` = K > 1): the
candidate ops of every edge see only the first ``op_channels = C // K`` channels of its source
(the waves above run on those, with every ``C`` above read as ``op_channels``: kernels, fan-ins
and layouts; the preprocessing ops still output ``C``). The other ``C - op_channels`` channels
bypass the ops (``ops.max_pool_2x2`` on the stride-2 edges of a reduction cell), scaled by the
sum of the edge's row of mixing weights; per wave their weighted sums into the target nodes are
one more ``matmul`` against those row sums (gathered with the other mixing weights). As the
channel shuffle is linear, each node is ``channel_shuffle(concat([op sums, bypass sums]), K)``
of its edges' summed (unshuffled) outputs: one shuffle per node instead of one per edge. The
spatial size must be even at a reduction cell. With K = 1 none of this is in the graph.

P-DARTS' skip-connect dropout (Chen et al., 2019; ``forward(..., skip_noise=(rate, noise),
salt=base)``, see ``search_cell``): every (source ``s``, target ``m``) edge then needs its own
mask, so the shared stride-1 identity above is replaced, for the waves that have one, by the
per-edge masked copies of each source (``ops.skip_dropout`` with salt ``base`` + the edge's
reference index, as the per-edge cell draws them) stacked to ``[N*H*W*C, S, M]`` and summed
over ``s`` against the identity weights. Without ``skip_noise`` the graph is the one above.

Select it with ``SearchEncoder(..., cell_impl="fused")``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import ops, validation
from ilnas_tf.search_cell import SearchCellBase, check_skip_noise

__all__ = ["FusedSearchCell"]

# name -> (kernel size, dilation, separable). Separable ops have a second (stride-1) stage.
_CONV_OPS = {
    "sep_conv_3x3": (3, 1, True),
    "sep_conv_5x5": (5, 1, True),
    "dil_conv_3x3": (3, 2, False),
    "dil_conv_5x5": (5, 2, False),
}
_POOL_OPS = {"max_pool_3x3": ops.max_pool_3x3, "avg_pool_3x3": ops.avg_pool_3x3}


def _effective_size(kernel_size: int, dilation: int) -> int:
    return (kernel_size - 1) * dilation + 1


def _reshape(x, tail):
    """Reshapes ``[N, H, W, ...]`` to ``[N, H, W, *tail]``."""
    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None:
        return tf.reshape(x, [-1, height, width, *tail])
    return tf.reshape(x, tf.concat([tf.shape(x)[:3], tf.constant(tail, tf.int32)], 0))


def _unflatten(x, like, tail):
    """Reshapes ``[N * H * W, ...]`` to ``[N, H, W, *tail]`` with ``N, H, W`` from ``like``."""
    height, width = like.shape[1], like.shape[2]
    if height is not None and width is not None:
        return tf.reshape(x, [-1, height, width, *tail])
    return tf.reshape(x, tf.concat([tf.shape(like)[:3], tf.constant(tail, tf.int32)], 0))


def _channel_shuffle(x, groups: int):
    """``ops.channel_shuffle`` (the same permutation) with static shapes where known."""
    channels = int(x.shape[-1])
    grouped = _reshape(x, [groups, channels // groups])
    return _reshape(tf.transpose(grouped, [0, 1, 2, 4, 3]), [channels])


def _pointwise(x, kernel):
    """Per-(op, edge) 1x1 convolutions as one batched matmul: ``[T, E, NHW, C]`` and kernels
    ``[T, E, C, D]`` -> ``[NHW, D, T, E]`` (channels (d, t, e)).

    An explicit transpose + ``matmul`` is faster on CPU than the equivalent ``einsum``.
    """
    return tf.transpose(tf.matmul(x, kernel), [2, 3, 0, 1])


def _depthwise(x, kernel, stride: int, pad: int):
    """``ops.depthwise_conv2d`` (undilated kernel): PyTorch's symmetric zero padding.

    (Explicit ``padding=[[0, 0], [p, p], [p, p], [0, 0]]`` would save the Pad op but runs on
    TF's much slower non-oneDNN CPU kernels.)
    """
    return ops.depthwise_conv2d(x, kernel, stride, pad)


def _pad_kernel(kernel, size: int):
    """Zero-pads the spatial taps of a ``[k, k, ...]`` kernel to ``[size, size, ...]``."""
    pad = (size - kernel.shape[0]) // 2
    if pad == 0:
        return kernel
    return tf.pad(kernel, [[pad, pad], [pad, pad]] + [[0, 0]] * (len(kernel.shape) - 2))


def _scatter(x, positions, size: int, axis: int):
    """Places the slices of ``x`` along ``axis`` at ``positions`` of a zero tensor of ``size``
    slices (``scatter_nd``: its gradient is dense, unlike ``gather``'s)."""
    if len(positions) == size:
        return x
    perm = [axis] + [i for i in range(len(x.shape)) if i != axis]
    moved = tf.transpose(x, perm) if axis else x
    shape = [size] + [int(d) for d in moved.shape[1:]]
    scattered = tf.scatter_nd(tf.constant([[p] for p in positions], tf.int32), moved, shape)
    inverse = [perm.index(i) for i in range(len(perm))]
    return tf.transpose(scattered, inverse) if axis else scattered


def _runs(items, key):
    """Splits ``items`` into maximal runs of consecutive items with equal ``key``."""
    runs = []
    for item in items:
        if runs and key(runs[-1][0]) == key(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


@keras.saving.register_keras_serializable(package="ilnas_tf")
class FusedSearchCell(SearchCellBase):
    """Drop-in replacement for ``SearchCell`` with its edges batched (see module docstring).

    Same arguments, config keys, call ``cell(s0, s1, weights)`` (``weights`` of shape
    ``(num_edges, len(primitives))`` in the reference edge order) and pure
    ``forward(kernels, s0, s1, weights, skip_noise=None, salt=0)`` (P-DARTS' skip-connect
    dropout: ``search_cell.SearchCellBase``); only the layout of the edge kernels differs.
    """

    # Which conv ops share one depthwise conv (zero taps added to smaller kernels are exact):
    # "exact": equal effective kernel sizes only (no extra FLOPs; sep_conv_5x5 + dil_conv_3x3);
    # "small" (default): all kernels up to 5x5 as 5x5, the dilated 5x5 (9x9) alone;
    # "pad": every kernel of a stage padded to the largest (fewest ops, most depthwise FLOPs).
    # Graph sizes and step times of the three: docs/benchmarks.md.
    depthwise_grouping = "small"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        present = {p for edge_ops in self.edge_ops for p in edge_ops}
        if present <= {"none"}:
            raise ValueError(f"primitives need an op other than 'none', got {self.primitives}")

        # Static edge bookkeeping.
        self.reference_edges = [
            (source, node) for node in range(self.steps) for source in range(2 + node)
        ]
        index = {edge: i for i, edge in enumerate(self.reference_edges)}
        self.waves = []  # (first wave-order edge, sources, edges per source)
        order = []
        for wave in range(self.steps):
            sources = [0, 1] if wave == 0 else [wave + 1]
            self.waves.append((len(order), sources, self.steps - wave))
            order.extend(index[(s, node)] for s in sources for node in range(wave, self.steps))
        self.wave_order = tuple(order)
        """``wave_order[j]``: reference index of the edge stored at wave position ``j``."""

        self.op_edges = {
            p: tuple(j for j, i in enumerate(order) if p in self.edge_ops[i]) for p in present
        }
        """``op_edges[op]``: the wave positions of the edges that hold ``op``."""
        self.reduce_skip_edges = (
            tuple(j for j in self.op_edges.get("skip_connect", ()) if j < 2 * self.steps)
            if self.reduction
            else ()
        )
        """Wave positions of the stride-2 ``skip_connect`` (``FactorizedReduce``) edges."""
        self.has_reduce_skip = bool(self.reduce_skip_edges)
        if self.has_reduce_skip and self.op_channels % 2:
            if self.partial_channels == 1:
                raise ValueError(
                    f"a reduction cell needs an even channel count, got {self.channels}"
                )
            validation.fail(
                "partial_channels",
                self.partial_channels,
                f"a divisor of channels={self.channels} leaving an even number of op channels "
                f"(got {self.op_channels}): a stride-2 skip_connect is a FactorizedReduce, "
                "which needs an even channel count",
            )
        self.conv_ops = [p for p in _CONV_OPS if p in present]
        self.sep_ops = [p for p in self.conv_ops if _CONV_OPS[p][2]]
        self.dil_ops = [p for p in self.conv_ops if not _CONV_OPS[p][2]]
        self.pool_ops = [p for p in _POOL_OPS if p in present]
        self.has_identity = "skip_connect" in present
        # Pointwise kernels are [T, E, C, C] stacks when every conv op is on every edge, else
        # [P, C, C] over the (op, edge) pairs that exist.
        self.dense_pointwise = all(len(self.op_edges[p]) == len(order) for p in self.conv_ops)
        self.edge_kernels = []
        self._weight_index = [self._wave_weight_index(w) for w in range(self.steps)]
        flat_index = [i.ravel() for indices in self._weight_index for i in indices if i is not None]
        self._weight_gather = np.concatenate(flat_index).astype(np.int32)
        self._weight_sizes = [len(i) for i in flat_index]

    # ------------------------------------------------------------------ static structure

    @property
    def num_edges(self) -> int:
        return len(self.reference_edges)

    def _wave_weight_index(self, wave):
        """Indices into ``concat(flatten(weights), [0], row sums)`` of ``wave``'s weighted sums.

        Returns ``(stage1, stage2, identity, bypass)``: ``[K1, M]``, ``[T2 * E, M]``, ``[S, M]``
        and ``[S, M]`` (``None`` when absent) for ``sum_k y[p, c, k] * W[k, m]`` over the
        stage-1 outputs (k: dil convs (t, e), FactorizedReduce (e), pools (p, s)), the separable
        convs' stage-2 outputs (k: (t, e)), the identity input (k: s) and, with partial
        channels, the bypass channels (k: s; ``zero + 1 + edge`` indexes the edge's row sum, which
        ``_mixing_weights`` appends for K > 1 only); ``m`` is target node ``wave + m``.
        """
        start, sources, per_source = self.waves[wave]
        columns = len(self.edge_ops[0])
        zero = self.num_edges * columns
        stride = 2 if self.reduction and wave == 0 else 1

        def flat(op, s, m):  # the (op, edge) weight's index, or the zero's
            edge = self.wave_order[start + s * per_source + m]
            if op not in self.edge_ops[edge]:
                return zero
            return edge * columns + self.edge_ops[edge].index(op)

        def per_edge_rows(op):  # rows (s, m'), columns m: the edge's weight where m' == m
            rows = np.full((len(sources), per_source, per_source), zero)
            if op is not None:
                for s in range(len(sources)):
                    for m in range(per_source):
                        rows[s, m, m] = flat(op, s, m)
            return rows.reshape(-1, per_source)

        def per_source_rows(op):  # rows s, columns m
            return np.array(
                [[flat(op, s, m) for m in range(per_source)] for s in range(len(sources))]
            ).reshape(-1, per_source)

        def row_sums():  # rows s, columns m: the edge's row sum
            return np.array(
                [
                    [
                        zero + 1 + self.wave_order[start + s * per_source + m]
                        for m in range(per_source)
                    ]
                    for s in range(len(sources))
                ]
            ).reshape(-1, per_source)

        stage1 = [per_edge_rows(op) for op in self.dil_ops]
        if self.has_reduce_skip and stride == 2:
            stage1.append(per_edge_rows("skip_connect"))
        stage1 += [per_source_rows(op) for op in self.pool_ops]
        stage2 = [per_edge_rows(op) for op in self.sep_ops]
        identity = self.has_identity and stride == 1
        return (
            np.concatenate(stage1) if stage1 else None,
            np.concatenate(stage2) if stage2 else None,
            per_source_rows("skip_connect") if identity else None,
            row_sums() if self.partial_channels > 1 else None,
        )

    def _stage_groups(self, names, stage):
        """Groups of conv ops sharing one depthwise conv in ``stage`` (1 or 2)."""
        size = {
            n: _effective_size(_CONV_OPS[n][0], _CONV_OPS[n][1] if stage == 1 else 1) for n in names
        }
        if self.depthwise_grouping == "pad":
            return [names] if names else []
        if self.depthwise_grouping == "small":
            return _runs(names, lambda n: max(size[n], 5))
        if self.depthwise_grouping != "exact":
            raise ValueError(f"unknown depthwise_grouping {self.depthwise_grouping!r}")
        return _runs(names, lambda n: size[n])

    def kernel_specs(self):
        """``(name, shape, fan_in)`` of the cell's own (stacked) kernels, in ``kernels`` order."""
        c, e = self.op_channels, self.num_edges  # the ops are built for op_channels

        def pointwise_shape(names):
            if self.dense_pointwise:
                return (len(names), e, c, c)
            return (sum(len(self.op_edges[n]) for n in names), c, c)

        specs = []
        for name in self.conv_ops:
            k = _CONV_OPS[name][0]
            specs.append((f"{name}_depthwise1", (k, k, c, len(self.op_edges[name])), k * k))
        if self.conv_ops:
            specs.append(("pointwise1", pointwise_shape(self.conv_ops), c))
        for name in self.sep_ops:
            k = _CONV_OPS[name][0]
            specs.append((f"{name}_depthwise2", (k, k, c, len(self.op_edges[name])), k * k))
        if self.sep_ops:
            specs.append(("pointwise2", pointwise_shape(self.sep_ops), c))
        if self.has_reduce_skip:
            specs.append(("factorized_reduce", (2, len(self.reduce_skip_edges), c, c // 2), c))
        return specs

    # ------------------------------------------------------------------ variables

    def build(self, s0_shape, s1_shape=None, weights_shape=None):
        """Builds the kernels (which depend on channel counts only).

        Keras matches the arguments to call's ``(s0, s1, weights)`` by name; a pair
        ``(s0_shape, s1_shape)`` as the first argument works too.
        """
        shape0, shape1 = s0_shape, s1_shape
        if shape1 is None and len(shape0) == 2 and isinstance(shape0[0], (tuple, list)):
            shape0, shape1 = shape0
        if shape1 is None:
            shape1 = (None, None, None, self.c_prev)
        self.check_partial_channel_shape(shape1)
        self.preprocess0.build(tuple(shape0))
        self.preprocess1.build(tuple(shape1))
        # One initialiser instance per variable (a shared instance repeats its values); every
        # slice of a stacked kernel has the fan-in of the per-edge kernel it stands for.
        self.edge_kernels = [
            self.add_weight(name=name, shape=shape, initializer=ops.torch_uniform(fan_in))
            for name, shape, fan_in in self.kernel_specs()
        ]
        self.built = True

    @property
    def kernels(self):
        return (
            list(self.preprocess0.kernels)
            + list(self.preprocess1.kernels)
            + list(self.edge_kernels)
        )

    # ------------------------------------------------------------------ forward

    def _split_waves(self, x, axis, inner=1):
        """Splits the edge axis of a kernel (all edges, wave order) into per-wave pieces."""
        sizes = [len(sources) * per_source * inner for _, sources, per_source in self.waves]
        return tf.split(x, sizes, axis=axis) if len(sizes) > 1 else [x]

    def _dense_kernels(self, kernels):
        """The cell's own kernels by name, in the dense layout (every op on every edge; zero
        kernels where an edge lacks an op)."""
        named = dict(zip([name for name, _, _ in self.kernel_specs()], kernels))
        e = self.num_edges
        for name in self.conv_ops:
            for stage in ("1", "2") if name in self.sep_ops else ("1",):
                key = f"{name}_depthwise{stage}"
                named[key] = _scatter(named[key], self.op_edges[name], e, axis=3)
        if not self.dense_pointwise:
            for key, names in (("pointwise1", self.conv_ops), ("pointwise2", self.sep_ops)):
                if names:
                    positions = [t * e + j for t, n in enumerate(names) for j in self.op_edges[n]]
                    dense = _scatter(named[key], positions, len(names) * e, axis=0)
                    named[key] = tf.reshape(dense, [len(names), e, *dense.shape[1:]])
        if self.has_reduce_skip:
            named["factorized_reduce"] = _scatter(
                named["factorized_reduce"], self.reduce_skip_edges, 2 * self.steps, axis=1
            )
        return named

    def _prepare(self, kernels):
        """Per-wave kernel tensors: stage-wise grouped depthwise kernels and pointwise stacks."""
        named = self._dense_kernels(kernels)
        prepared = {"factorized_reduce": named.get("factorized_reduce")}
        for key in ("pointwise1", "pointwise2"):
            if key in named:
                prepared[key] = self._split_waves(named[key], 1)
        stage1 = []
        for group in self._stage_groups(self.conv_ops, 1):
            dilated = []
            for name in group:
                _, dilation, _ = _CONV_OPS[name]
                dilated.append(ops.dilate_kernel(named[f"{name}_depthwise1"], dilation))
            size = max(k.shape[0] for k in dilated)
            # [K, K, C, (e, g)]: per wave, merging (C, S) and (M, G) gives a channel-multiplier
            # kernel for inputs laid out (c, s) and outputs (c, s, m, g).
            stacked = tf.stack([_pad_kernel(k, size) for k in dilated], axis=-1)
            stacked = tf.reshape(stacked, [size, size, self.op_channels, -1])
            stage1.append((len(group), size, self._split_waves(stacked, 3, len(group))))
        stage2 = []
        for group in self._stage_groups(self.sep_ops, 2):
            size = max(_CONV_OPS[name][0] for name in group)
            # [K, K, G, C, E]: per wave, a kernel for inputs laid out (g, c, e).
            padded = [_pad_kernel(named[f"{name}_depthwise2"], size) for name in group]
            stacked = padded[0][:, :, None] if len(padded) == 1 else tf.stack(padded, axis=2)
            stage2.append((len(group), size, self._split_waves(stacked, 4)))
        prepared["stage1"], prepared["stage2"] = stage1, stage2
        return prepared

    def _mixing_weights(self, weights):
        """The weighted-sum matrices of every wave (see ``_wave_weight_index``), one gather
        (from the flattened weights, a zero and, with partial channels, the row sums)."""
        flat = tf.reshape(weights, [-1])
        pieces = [flat, tf.zeros([1], flat.dtype)]
        if self.partial_channels > 1:
            pieces.append(tf.reduce_sum(weights, axis=1))
        flat = tf.gather(tf.concat(pieces, 0), self._weight_gather)
        pieces = iter(tf.split(flat, self._weight_sizes) if len(self._weight_sizes) > 1 else [flat])
        return [
            tuple(None if i is None else tf.reshape(next(pieces), i.shape) for i in indices)
            for indices in self._weight_index
        ]

    def _preprocess(self, kernels, s0, s1):
        """Both preprocessing ops with one batch norm; returns the wave-0 input, layout (c, s)."""
        n0 = len(self.preprocess0.kernel_specs())
        k0, k1 = kernels[:n0], kernels[n0:]
        x0 = tf.nn.relu(s0)
        if self.reduction_prev:
            even, odd = x0[:, ::2, ::2, :], x0[:, 1::2, 1::2, :]
            if odd.shape[1] != even.shape[1] or odd.shape[2] != even.shape[2]:
                raise ValueError(
                    f"FusedSearchCell '{self.name}': preprocess0 (FactorizedReduce) needs an "
                    f"even spatial size, got input shape {tuple(s0.shape)}"
                )
            p0 = tf.concat([ops.conv2d(even, k0[0]), ops.conv2d(odd, k0[1])], axis=-1)
        else:
            p0 = ops.conv2d(x0, k0[0])
        p1 = ops.conv2d(tf.nn.relu(s1), k1[0])
        x = _reshape(tf.stack([p0, p1], axis=-1), [2 * self.channels])
        return ops.batch_norm(x)

    def _dropped_identity(self, wave, x, identity, skip_noise, salt):
        """The identity term of ``wave`` with P-DARTS' skip-connect dropout: ``[NHW * C, M]``.

        Each (source ``s``, target ``m``) edge holding ``skip_connect`` masks its own copy of
        source ``s`` (``ops.skip_dropout`` with salt ``salt`` + its reference index); edges
        without it keep the source unmasked (their identity weight is zero). The copies,
        ``[NHW * C, S, M]``, are summed over ``s`` against the identity weights ``[S, M]``.
        """
        start, sources, per_source = self.waves[wave]
        rate, noise = skip_noise
        inputs = tf.unstack(_reshape(x, [self.op_channels, len(sources)]), axis=-1)
        per_source_copies = []
        for s, source in enumerate(inputs):
            copies = []
            for m in range(per_source):
                edge = self.wave_order[start + s * per_source + m]
                if "skip_connect" in self.edge_ops[edge]:
                    copies.append(ops.skip_dropout(source, rate, noise, salt + edge))
                else:
                    copies.append(source)
            per_source_copies.append(tf.stack(copies, axis=-1))  # [N, H, W, C, M]
        masked = tf.stack(per_source_copies, axis=-2)  # [N, H, W, C, S, M]
        masked = tf.reshape(masked, [-1, len(sources), per_source])
        return tf.reduce_sum(masked * identity, axis=1)

    def _wave(self, wave, prepared, x, weights, skip_noise=None, salt=0):
        """Weighted sums of the edges of ``wave`` (input ``x``, channels (c, s)) into nodes
        ``wave .. steps - 1``: ``[N, H, W, C, M]`` (with partial channels: op channels, then
        bypass channels, unshuffled). ``skip_noise``, ``salt``: see ``_dropped_identity``."""
        start, sources, per_source = self.waves[wave]
        c = self.op_channels
        num_sources = len(sources)
        edges = num_sources * per_source
        stride = 2 if self.reduction and wave == 0 else 1
        bypass = None
        if self.partial_channels > 1:
            # Layout (c, s): each source's first op_channels channels come first.
            x, bypass = tf.split(x, [c * num_sources, (self.channels - c) * num_sources], -1)
            if stride == 2:
                bypass = ops.max_pool_2x2(bypass)
        reduce_skip = self.has_reduce_skip and stride == 2
        relu = tf.nn.relu(x) if self.conv_ops or reduce_skip else None
        like = x  # any tensor with the output's N, H, W

        # Stage 1: every conv op's first depthwise (grouped) + pointwise (one batched matmul),
        # FactorizedReduce and the pools: one batch norm over [sep convs (t, c, e) | rest (c, k)]
        # with rest = dil convs (t, e), FactorizedReduce (e), pools (p, s).
        sep, rest = None, []
        if self.conv_ops:
            outputs = []
            for count, size, kernel in prepared["stage1"]:
                kernel = kernel[wave]  # [K, K, C, (s, m, g)]
                if num_sources > 1:
                    kernel = tf.reshape(kernel, [size, size, c * num_sources, per_source * count])
                like = _depthwise(relu, kernel, stride, (size - 1) // 2)
                outputs.append(tf.reshape(like, [-1, c, edges, count]))
            y = outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=-1)  # (c, e, t)
            y = tf.matmul(tf.transpose(y, [3, 2, 0, 1]), prepared["pointwise1"][wave])
            n_sep, n_dil = len(self.sep_ops), len(self.dil_ops)
            if n_sep and n_dil:
                y_sep, y_dil = tf.split(y, [n_sep, n_dil])  # [T, E, NHW, D] each
            else:
                y_sep, y_dil = (y, None) if n_sep else (None, y)
            if n_sep:
                sep = tf.reshape(tf.transpose(y_sep, [2, 0, 3, 1]), [-1, n_sep * c * edges])
            if n_dil:
                rest.append(tf.reshape(tf.transpose(y_dil, [2, 3, 0, 1]), [-1, c, n_dil * edges]))
        if reduce_skip:
            even, odd = relu[:, ::2, ::2, :], relu[:, 1::2, 1::2, :]
            if odd.shape[1] != even.shape[1] or odd.shape[2] != even.shape[2]:
                raise ValueError(
                    f"FusedSearchCell '{self.name}' reduces with FactorizedReduce, which needs "
                    f"an even spatial size; got input shape {tuple(x.shape)}"
                )
            like = even
            # Per (k, s): [NHW, C] @ [C, (m, d)]; the output channel is (k, d).
            y = tf.reshape(tf.stack([even, odd]), [2, -1, c, num_sources])
            kernel = tf.reshape(
                prepared["factorized_reduce"], [2, num_sources, per_source, c, c // 2]
            )
            kernel = tf.reshape(
                tf.transpose(kernel, [0, 1, 3, 2, 4]), [2, num_sources, c, per_source * c // 2]
            )
            y = tf.matmul(tf.transpose(y, [0, 3, 1, 2]), kernel)  # [2, S, NHW, (m, d)]
            y = tf.reshape(y, [2, num_sources, -1, per_source, c // 2])
            rest.append(tf.reshape(tf.transpose(y, [2, 0, 4, 1, 3]), [-1, c, edges]))
        for name in self.pool_ops:
            like = _POOL_OPS[name](x, stride)
            rest.append(tf.reshape(like, [-1, c, num_sources]))
        stage1, stage2, identity, bypass_weights = weights
        terms = []
        blocks = {}  # name -> [NHW, channels], batch-normalised together
        if sep is not None:
            blocks["sep"] = sep
        if rest:
            rest = rest[0] if len(rest) == 1 else tf.concat(rest, axis=-1)
            blocks["rest"] = tf.reshape(rest, [-1, c * rest.shape[-1]])  # (c, k)
        if blocks:
            sizes = [b.shape[-1] for b in blocks.values()]
            y = list(blocks.values())
            y = tf.concat(y, axis=-1) if len(y) > 1 else y[0]
            y = tf.reshape(ops.batch_norm(_unflatten(y, like, [sum(sizes)])), [-1, sum(sizes)])
            blocks = dict(zip(blocks, tf.split(y, sizes, axis=-1) if len(blocks) > 1 else [y]))
        if "rest" in blocks:
            terms.append(tf.matmul(tf.reshape(blocks["rest"], [-1, stage1.shape[0]]), stage1))
        sep = blocks.get("sep")

        # Stage 2: the separable convs' second depthwise (stride 1) + pointwise.
        if sep is not None:
            groups = prepared["stage2"]
            inputs = tf.nn.relu(sep)  # (t, c, e)
            if len(groups) > 1:
                inputs = tf.split(inputs, [n * c * edges for n, _, _ in groups], axis=-1)
            else:
                inputs = [inputs]
            outputs = []
            for (count, size, kernel), part in zip(groups, inputs):
                kernel = tf.reshape(kernel[wave], [size, size, count * c * edges, 1])
                part = _unflatten(part, like, [count * c * edges])
                outputs.append(_depthwise(part, kernel, 1, (size - 1) // 2))
            y = outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=-1)
            y = tf.reshape(y, [-1, len(self.sep_ops), c, edges])
            y = _pointwise(tf.transpose(y, [1, 3, 0, 2]), prepared["pointwise2"][wave])
            y = ops.batch_norm(_unflatten(y, like, [c * len(self.sep_ops) * edges]))
            terms.append(tf.matmul(tf.reshape(y, [-1, len(self.sep_ops) * edges]), stage2))
        if identity is not None and skip_noise is not None:
            terms.append(self._dropped_identity(wave, x, identity, skip_noise, salt))
        elif identity is not None:
            terms.append(tf.matmul(tf.reshape(x, [-1, num_sources]), identity))
        total = terms[0] if len(terms) == 1 else tf.add_n(terms)  # [NHW * C, M]
        if bypass is None:
            return _unflatten(total, like, [c, per_source])
        # Bypass channels (c, s) @ row sums [S, M]: [NHW * (C - op_channels), M].
        bypass = tf.matmul(tf.reshape(bypass, [-1, num_sources]), bypass_weights)
        return tf.concat(
            [
                _unflatten(total, like, [c, per_source]),
                _unflatten(bypass, like, [self.channels - c, per_source]),
            ],
            axis=3,
        )

    def forward(self, kernels, s0, s1, weights, skip_noise=None, salt=0):
        """Pure forward pass; ``kernels`` in ``self.kernels`` order, ``weights`` (edges, ops).

        ``skip_noise``: ``None`` (no dropout) or ``(rate, noise)`` for P-DARTS' skip-connect
        dropout, with salt ``salt`` + the reference edge index (``ops.skip_dropout``).
        """
        skip_noise = check_skip_noise("skip_noise", skip_noise, self.partial_channels)
        salt = validation.check_int("salt", salt)
        n_pre = len(self.preprocess0.kernel_specs()) + len(self.preprocess1.kernel_specs())
        self.check_partial_channel_shape(s1.shape)
        x = self._preprocess(kernels[:n_pre], s0, s1)
        prepared = self._prepare(kernels[n_pre:])
        mixing = self._mixing_weights(weights)
        incoming = [[] for _ in range(self.steps)]  # per node: its edges' weighted sums
        nodes = []
        for wave in range(self.steps):
            contribution = self._wave(wave, prepared, x, mixing[wave], skip_noise, salt)
            last = wave == self.steps - 1
            pieces = [contribution[..., 0]] if last else tf.unstack(contribution, axis=-1)
            for node, piece in enumerate(pieces, start=wave):
                incoming[node].append(piece)
            x = incoming[wave][0] if wave == 0 else tf.add_n(incoming[wave])
            if self.partial_channels > 1:  # linear: shuffling the sum = summing the shuffled
                x = _channel_shuffle(x, self.partial_channels)
            nodes.append(x)
        return tf.concat(nodes[-self.multiplier :], axis=-1)
