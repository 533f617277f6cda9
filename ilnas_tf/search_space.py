"""The DARTS supernet: architecture parameters, encoder and task heads.

Layer for layer this is quark0/darts ``cnn/model_search.py`` split the way interleaving
learning needs it:

* ``Architecture`` holds the architecture parameters A (``alpha_normal``, ``alpha_reduce``,
  shape ``(num_edges, num_ops)``, initialised as ``1e-3 * N(0, 1)``) and decides how they
  become mixing weights, what extra terms the architecture objective has and how the discrete
  genotype is derived. It lives outside every encoder, so K learners can each own a
  ``SearchEncoder`` (their weights W_k) while sharing one architecture.
* ``SearchEncoder`` (stem -> search cells -> global average pooling) takes the *mixing
  weights* as call arguments, so it can be evaluated at substituted weights with
  ``encoder.stateless_call(weights, [], images, weights_normal, weights_reduce)`` under
  nested ``GradientTape``s, with A differentiable through the mixing weights. Its cells are
  ``fused_cell.FusedSearchCell``s (default) or the per-edge ``search_cell.SearchCell``s.
* ``ClassifierHead`` is one Dense layer per task (H_k).

Both ``Architecture`` and ``SearchEncoder`` take per-edge candidate-op subsets
(``edge_primitives``, as P-DARTS prunes the candidates between its stages).

Module order (no import cycles): ``genotype`` -> ``ops`` -> ``search_cell`` -> ``fused_cell``
(and ``recompute``) -> ``search_space``. ``MixedOp``, ``SearchCell``, ``STEPS``,
``MULTIPLIER``, ``num_edges`` and ``reduction_layers`` are re-exported here for convenience.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import ops, recompute, validation
from ilnas_tf.fused_cell import FusedSearchCell
from ilnas_tf.genotype import STEM_MULTIPLIER, reduction_layers
from ilnas_tf.search_cell import (
    MULTIPLIER,
    STEPS,
    MixedOp,
    SearchCell,
    SearchCellBase,
    check_partial_channels,
    check_primitives,
    check_skip_noise,
    tensor_skip_noise_arguments,
)

__all__ = [
    "MULTIPLIER",
    "STEM_MULTIPLIER",
    "STEPS",
    "Architecture",
    "ClassifierHead",
    "MixedOp",
    "SearchCell",
    "SearchCellBase",
    "SearchEncoder",
    "num_edges",
    "reduction_layers",
]

num_edges = genotype_lib.num_cell_edges
"""Edges of a cell with ``steps`` intermediate nodes (14 for 4): ``genotype.num_cell_edges``."""

CELL_CLASSES = {"per_edge": SearchCell, "fused": FusedSearchCell}
RECOMPUTE = ("none", "cells")
"""``SearchEncoder``'s ``recompute`` options."""


def _edge_primitives_config(edge_primitives):
    if edge_primitives is None:
        return None
    return [[list(subset) for subset in cell] for cell in edge_primitives]


def _recomputed_cell(cell, s0, s1, weights):
    """``cell(s0, s1, weights)`` with the cell's activations recomputed in the backward pass.

    The kernels are read here, inside the caller's (stateless) scope, and passed to the pure
    ``cell.forward`` as arguments: the backward pass, which runs outside that scope, would
    otherwise recompute with the stored variable values.
    """
    kernels = [k.value for k in cell.kernels]
    count = len(kernels)

    def forward(*args):
        return cell.forward(list(args[:count]), *args[count:])

    return recompute.recomputed(forward, kernels + [s0, s1, weights], name=f"{cell.name}_fwd")


@keras.saving.register_keras_serializable(package="ilnas_tf")
class Architecture(keras.layers.Layer):
    """Architecture parameters A shared by all learners, and what they mean.

    DARTS (Liu et al., 2019): one logit per (edge, op) and cell kind, ``alpha_normal`` and
    ``alpha_reduce`` of shape ``(num_edges, num_ops)``; the mixing weights are their softmax
    over the ops of each edge; the architecture objective has no extra term; the genotype keeps
    the two strongest edges per node, each with its strongest op other than ``none``.

    Extension points (a subclass overrides them together; the engine and the search loop only
    use these):

    * ``parameters``: every variable of A. The engine differentiates the architecture
      objective with respect to these, and the architecture optimiser updates them.
      PC-DARTS (Xu et al., 2020) appends its edge betas; PR-DARTS its gate parameters.
    * ``mixing(parameters)``: tensors shaped like ``parameters`` (the engine passes substituted
      values, not the variables) -> ``(weights_normal, weights_reduce)``, each of
      ``SearchEncoder.mixing_shape``. PC-DARTS multiplies the op softmax by the edge-normalised
      betas; PR-DARTS samples stochastic gates.
    * ``objective_terms(parameters)``: a scalar tensor added to the architecture objective, or
      ``None``. PR-DARTS adds its regularisers here.
    * ``genotype()``: the discrete architecture. PC-DARTS ranks edges by alpha x beta
      (``genotype.derive_genotype``'s ``edge_weight_*`` arguments), the weights that
      ``edge_weights()`` returns (``None`` here) and summaries show.

    * ``next_sample()``, ``start_epoch(epoch, epochs)``, ``summary_scalars()``,
      ``evaluation_mixing(parameters)``: for stochastic architectures (PR-DARTS' gates): a new
      noise sample before every iteration (``engine.distributed_step``), per-epoch schedules,
      TensorBoard scalars, and the noise-free mixing of evaluations (no-ops / ``mixing`` here).

    ``alphas`` stays ``[alpha_normal, alpha_reduce]`` (summaries and genotypes read it).

    Args:
      primitives: candidate op names (default: the DARTS ``PRIMITIVES``).
      steps: intermediate nodes per cell.
      init_scale: alphas are initialised as ``init_scale * N(0, 1)``.
      multiplier: nodes concatenated into a cell's output, for the derived genotype (default:
        all ``steps`` nodes, as DARTS' 4 of 4).
      edge_primitives: ``None`` (every edge has all ``primitives``) or per-edge op subsets
        ``(normal, reduce)`` (see ``genotype.check_edge_primitives``): the alphas are then
        ``(num_edges, n_ops)`` and column ``j`` of edge ``e`` of the normal cell stands for op
        ``edge_primitives[0][e][j]``.
    """

    def __init__(
        self,
        primitives=genotype_lib.PRIMITIVES,
        steps=STEPS,
        init_scale=1e-3,
        multiplier=None,
        edge_primitives=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.primitives = check_primitives("primitives", primitives)
        self.steps = validation.check_int("steps", steps, minimum=1)
        self.multiplier = self.steps if multiplier is None else multiplier
        self.multiplier = validation.check_int("multiplier", self.multiplier, 1, self.steps)
        self.init_scale = validation.check_number("init_scale", init_scale, minimum=0.0)
        self.edge_primitives = genotype_lib.check_edge_primitives(
            "edge_primitives", edge_primitives, self.primitives, self.steps
        )
        num_ops = len(self.primitives if edge_primitives is None else self.edge_primitives[0][0])
        shape = (num_edges(self.steps), num_ops)
        self.alpha_normal = self.add_logits("alpha_normal", shape)
        self.alpha_reduce = self.add_logits("alpha_reduce", shape)
        self.built = True

    def add_logits(self, name, shape):
        """A variable of A initialised as ``init_scale * N(0, 1)`` (subclasses add theirs)."""
        # One initialiser instance per variable: a shared instance repeats its values.
        initializer = keras.initializers.RandomNormal(stddev=self.init_scale)
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    @property
    def alphas(self) -> list:
        """``[alpha_normal, alpha_reduce]``."""
        return [self.alpha_normal, self.alpha_reduce]

    @property
    def parameters(self) -> list:
        """Every variable of A, in a fixed order (DARTS: ``[alpha_normal, alpha_reduce]``)."""
        return [self.alpha_normal, self.alpha_reduce]

    def mixing(self, parameters):
        """``(weights_normal, weights_reduce)`` from tensors shaped like ``self.parameters``.

        DARTS: a softmax over the ops of every edge.
        """
        alpha_normal, alpha_reduce = parameters[0], parameters[1]
        return tf.nn.softmax(alpha_normal, axis=-1), tf.nn.softmax(alpha_reduce, axis=-1)

    def objective_terms(self, parameters):
        """Extra terms of the architecture objective (a scalar tensor), or ``None`` (DARTS)."""
        del parameters
        return None

    def evaluation_mixing(self, parameters):
        """The mixing weights of evaluations (search-val accuracy): ``mixing`` here."""
        return self.mixing(parameters)

    def next_sample(self):
        """Draws the noise of the next iteration (DARTS: none)."""

    def start_epoch(self, epoch, epochs):
        """Per-epoch schedules at ``epoch`` of ``epochs`` (DARTS: none)."""
        del epoch, epochs

    def summary_scalars(self) -> dict:
        """``{tag: float}`` written with the search's summaries (DARTS: none)."""
        return {}

    def edge_weights(self):
        """Per-edge weights ``(normal, reduce)`` (NumPy) the derivation multiplies the op
        softmax by, or ``None`` (DARTS: every edge weighs 1). PC-DARTS: its beta_hat."""
        return None

    def genotype(self) -> genotype_lib.Genotype:
        """The discrete architecture by the DARTS rule (see ``genotype.derive_genotype``)."""
        return genotype_lib.derive_genotype(
            np.asarray(self.alpha_normal.numpy()),
            np.asarray(self.alpha_reduce.numpy()),
            primitives=self.primitives,
            steps=self.steps,
            multiplier=self.multiplier,
            edge_primitives=self.edge_primitives,
        )

    def call(self, inputs=None):
        return self.mixing([p.value for p in self.parameters])

    def get_config(self):
        config = super().get_config()
        config.update(
            primitives=list(self.primitives),
            steps=self.steps,
            init_scale=self.init_scale,
            multiplier=self.multiplier,
            edge_primitives=_edge_primitives_config(self.edge_primitives),
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class SearchEncoder(keras.layers.Layer):
    """Stem (3x3 conv to ``3 * channels`` + BN) -> ``layers`` search cells -> global average pool.

    Call as ``encoder(images, weights_normal, weights_reduce, skip_noise=None)``, each of shape
    ``encoder.mixing_shape``; returns ``(batch, features)`` with ``features ==
    encoder.output_channels``. ``skip_noise``: ``None``, or with ``skip_dropout=True`` a pair
    ``(rate, noise)`` turning on P-DARTS' skip-connect dropout for this call (training
    forward passes; see ``skip_dropout`` below). The stem BN is affine (as in the reference); every other BN is
    non-affine. All BNs use batch statistics (see ``ops``).

    Args:
      channels: channels of the first cell's nodes (doubled at each reduction).
      layers: number of cells; reductions at ``layers // 3`` and ``2 * layers // 3``.
      primitives, steps, multiplier: candidate ops, intermediate nodes, nodes concatenated.
      stem_multiplier: the stem outputs ``stem_multiplier * channels`` channels.
      input_channels: channels of the images.
      cell_impl: ``"fused"`` (default): ``fused_cell.FusedSearchCell``s, the same function and
        parameter count as the per-edge cells with batched edges, many times fewer graph ops
        and less compile time (``docs/benchmarks.md``); ``"per_edge"``:
        ``search_cell.SearchCell``s, the layer-for-layer reference.
      edge_primitives: ``None`` or per-edge op subsets ``(normal, reduce)`` (see
        ``genotype.check_edge_primitives``; P-DARTS): normal cells get ``normal``, reduction
        cells ``reduce``; only the ops present have parameters.
      recompute: a memory option (the search command's ``run_search.recompute``).
        ``"none"`` (default): tapes and accumulators store
        every activation. ``"cells"``: they store each cell's inputs and output only; every
        derivative recomputes the cell's internal activations (gradient checkpointing,
        ``recompute.recomputed``), and a second-order pass (nested tapes,
        forward-over-reverse) recomputes the cell's VJP as well instead of storing it. The
        same function and derivatives to round-off, in eager and ``tf.function`` code and
        under ``tf.distribute`` (``tests/test_recompute.py``), for 2 (first order) to 4
        (second order) runs of each cell instead of 1. The saving is in activations, so it
        grows with batch and image size: peak RSS of ``tools/benchmark_search.py
        --channels=8 --layers=5 --learners=1 --rounds=1 --mode=exact`` (CPU) at batch 64:
        stage-wise 6.2 -> 5.5 GiB (forward-over-reverse), 6.2 -> 5.0 GiB
        (reverse-over-reverse), nested tapes 9.4 -> 4.5 GiB; at batch 16, where compiling
        the larger graph dominates, 3.1 -> 3.3 GiB (stage-wise).
      partial_channels: PC-DARTS' K (Xu et al., 2020): ``1`` (DARTS) or a divisor of
        ``channels``; every edge of every cell sends ``1 / K`` of its channels through its ops
        (``search_cell.SearchCellBase``). With edge normalisation, pair it with
        ``pc_darts.EdgeNormalizedArchitecture``.
      skip_dropout: P-DARTS' dropout after every stride-1 ``skip_connect`` of the cells (Chen
        et al., 2019, "Progressive Differentiable Architecture Search: Bridging the Depth Gap
        between Search and Evaluation"). ``False`` (default): ``call`` refuses ``skip_noise``
        and nothing in the graph changes. ``True``: a call with ``skip_noise=(rate, noise)``
        drops out each such edge's output with its own mask, ``ops.skip_dropout(x, rate,
        noise, salt)`` with ``salt = cell_index * num_edges + edge`` (reference edge order), a
        stateless function of the batch's ``noise`` (int64 ``[batch, 3]``: stream id, batch
        index, position in the global batch) that every re-evaluation on the same batch, a
        resumed run and a ``tf.distribute`` replica reproduce; ``skip_noise=None``: no dropout
        (evaluation). Not supported yet with ``partial_channels > 1`` or
        ``recompute="cells"`` (refused).
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
        cell_impl="fused",
        edge_primitives=None,
        recompute="none",
        partial_channels=1,
        skip_dropout=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cell_impl = validation.check_choice("cell_impl", cell_impl, tuple(CELL_CLASSES))
        self.recompute = validation.check_choice("recompute", recompute, RECOMPUTE)
        cell_class = CELL_CLASSES[cell_impl]
        self.channels = validation.check_int("channels", channels, minimum=1)
        self.num_layers = validation.check_int("layers", layers, minimum=1)
        self.primitives = check_primitives("primitives", primitives)
        self.steps = validation.check_int("steps", steps, minimum=1)
        self.multiplier = validation.check_int("multiplier", multiplier, minimum=1)
        self.stem_multiplier = validation.check_int("stem_multiplier", stem_multiplier, minimum=1)
        self.input_channels = validation.check_int("input_channels", input_channels, minimum=1)
        self.edge_primitives = genotype_lib.check_edge_primitives(
            "edge_primitives", edge_primitives, self.primitives, self.steps
        )
        self.partial_channels = check_partial_channels(
            "partial_channels", partial_channels, self.channels
        )
        self.skip_dropout = validation.check_bool("skip_dropout", skip_dropout)
        if self.skip_dropout and self.partial_channels > 1:
            validation.fail(
                "skip_dropout",
                skip_dropout,
                f"False with partial_channels={self.partial_channels}: skip-connect dropout is "
                "not supported with partial channel connections yet",
            )
        if self.skip_dropout and self.recompute == "cells":
            validation.fail(
                "skip_dropout",
                skip_dropout,
                "False with recompute='cells': skip-connect dropout is not supported with "
                "recomputed cells yet",
            )
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
                    None if self.edge_primitives is None else self.edge_primitives[reduction],
                    partial_channels=self.partial_channels,
                    dtype=self.dtype_policy,
                    name=f"cell_{index}",
                )
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, self.multiplier * c_curr
        self.output_channels = c_prev

    @property
    def mixing_shape(self) -> tuple[int, int]:
        """``(num_edges, num_ops)``: the shape of each mixing-weight tensor ``call`` takes."""
        edge_ops = self.primitives if self.edge_primitives is None else self.edge_primitives[0][0]
        return (num_edges(self.steps), len(edge_ops))

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

    def _check_skip_noise(self, skip_noise):
        """``None`` or ``(rate, noise)`` as tensors; refused unless ``skip_dropout``."""
        if skip_noise is not None and not self.skip_dropout:
            validation.fail(
                "skip_noise", skip_noise, "None: the encoder was built with skip_dropout=False"
            )
        return check_skip_noise("skip_noise", skip_noise, self.partial_channels)

    def __call__(self, *args, **kwargs):
        # Keras refuses a nested call argument mixing tensors and Python numbers.
        args, kwargs = tensor_skip_noise_arguments(args, kwargs, 3, self.partial_channels)
        return super().__call__(*args, **kwargs)

    def call(self, images, weights_normal, weights_reduce, skip_noise=None):
        skip_noise = self._check_skip_noise(skip_noise)
        s = ops.conv2d(images, self.stem_kernel.value, 1, 1)
        s0 = s1 = ops.batch_norm(s, self.stem_gamma.value, self.stem_beta.value)
        edges = num_edges(self.steps)
        for index, cell in enumerate(self.cells):
            weights = weights_reduce if cell.reduction else weights_normal
            if self.recompute == "cells":
                s0, s1 = s1, _recomputed_cell(cell, s0, s1, weights)
            elif skip_noise is not None:
                s0, s1 = s1, cell(s0, s1, weights, skip_noise=skip_noise, salt=index * edges)
            else:
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
            cell_impl=self.cell_impl,
            edge_primitives=_edge_primitives_config(self.edge_primitives),
            recompute=self.recompute,
            partial_channels=self.partial_channels,
            skip_dropout=self.skip_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class ClassifierHead(keras.layers.Layer):
    """A task head H_k: one Dense layer from encoder features to ``num_classes`` logits."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = validation.check_int("num_classes", num_classes, minimum=1)
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
