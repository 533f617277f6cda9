"""PR-DARTS' architecture: stochastic hard-concrete gates and path-regularised sparsity.

PR-DARTS (Zhou, Xiong, Socher and Hoi, 2020, "Theory-Inspired Path-Regularized Differential
Network Architecture Search"; salesforce/PR-DARTS ``search_model_prdarts_nasnet.py``) replaces
DARTS' softmax over the ops of an edge by one independent stochastic gate per (edge, op):

* *Gate sample* (``hard_concrete_gates``): with the gate logit ``alpha`` (the architecture
  parameter; the paper's ``beta``) and ``u ~ U(0, 1)``,
  ``g = clip(a + (b - a) * sigmoid((alpha + log u - log(1 - u)) / tau), 0, 1)``, ``a < 0 < 1 < b``
  (reference ``a = -0.1``, ``b = 1.1``). This is the paper's form with ``v2 = sigmoid(beta)``:
  ``log v2 - log(1 - v2) = beta``, so both write the same sample; the reference code adds
  ``alpha`` to the logistic noise directly, as here.
* *Hard top-k mixing* (``top_k_mask``): on every edge the ``k`` (2) ops of largest gate value are
  switched on; the mixing weight is the mask in the forward pass and, for the switched-on ops,
  the gate's derivative in the backward pass (straight-through: ``mask * (g - stop_gradient(g))
  + mask``; the reference computes only the switched-on ops, so the others get no gradient).
  Ties (gates clipped to exactly 0 or 1) are broken by a random column order, as the
  reference's random permutation; with gate dropout (reference ``dropout_pro = 0.4``) every
  gate is dropped with that probability before the top-k, so a dropped op is chosen only where
  fewer than ``k`` survive.
* *Activation probability* ``P(g != 0) = sigmoid(alpha - tau * log(-a / b))``
  (``activation_probability``), and the deterministic gate of the reference's ``show_alphas``,
  ``clip(a + (b - a) * sigmoid((alpha + 0.5) / tau), 0, 1)`` (``deterministic_gates``): the
  search's evaluations switch on each edge's top-k ops by it (``evaluation_mixing``; the
  reference evaluates with a fresh sample), and the genotype keeps each node's two edges of
  largest activation probability (over ops other than 'none'), each with that op (the
  reference's own ``genotype()`` ranks (op, edge) pairs by a softmax of the logits instead).
* *Regularisers* (``regularizers``), on the gates the sample switched on (the mask), each cell
  weighing 1/2: the mean activation probability of the skip-connect gates (L_skip), of the
  pooling gates (L_pool) and of the other gates (L_non-skip: 'none' and the parameterised ops),
  each summed over the two cells and hinged at ``threshold`` (reference 0.2: ``max(L - 0.2,
  0)``); and the path term L_path: on the chain of edges input 1 -> node 0 -> node 1 -> ... (each
  node's edge from its predecessor), the product over the edges with a switched-on parameterised
  op of their mean activation probability (0 where no edge has one). The architecture objective
  adds ``lambda_1 L_skip + lambda_2 (L_non-skip + L_pool) - lambda_3 L_path``, reference
  ``(0.01, 0.005, 0.005)``.

The gate noise is not drawn inside the computation: ``GatedArchitecture`` keeps the current
sample in non-trainable variables that ``resample(step)`` overwrites from a stateless generator
keyed by ``(seed, step)``. Every evaluation between two resamples (both sides of a finite
difference, the nested tapes of the exact chain, every replica of a mirrored step) therefore sees
one sample, and a resumed run draws the samples of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import gin
from ilnas_tf import genotype as genotype_lib
from ilnas_tf import validation
from ilnas_tf.search_space import Architecture, num_edges

__all__ = [
    "GateSettings",
    "GatedArchitecture",
    "activation_probability",
    "deterministic_gates",
    "hard_concrete_gates",
    "path_edges",
    "regularizers",
    "top_k_mask",
]

SKIP = ("skip_connect",)
POOLING = ("max_pool_3x3", "avg_pool_3x3")
PARAMETERISED = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def hard_concrete_gates(logits, uniform, tau, limit_a=-0.1, limit_b=1.1):
    """Clipped hard-concrete samples ``clip(a + (b - a) sigmoid((logits + logit(u)) / tau), 0, 1)``."""
    noise = tf.math.log(uniform) - tf.math.log1p(-uniform)
    stretched = tf.sigmoid((logits + noise) / tau) * (limit_b - limit_a) + limit_a
    return tf.clip_by_value(stretched, 0.0, 1.0)


def deterministic_gates(logits, tau, limit_a=-0.1, limit_b=1.1):
    """The reference's noise-free gate ``clip(a + (b - a) sigmoid((logits + 0.5) / tau), 0, 1)``."""
    stretched = tf.sigmoid((logits + 0.5) / tau) * (limit_b - limit_a) + limit_a
    return tf.clip_by_value(stretched, 0.0, 1.0)


def activation_probability(logits, tau, limit_a=-0.1, limit_b=1.1):
    """``P(gate != 0) = sigmoid(logits - tau log(-a / b))``."""
    return tf.sigmoid(logits - tau * float(np.log(-limit_a / limit_b)))


def top_k_mask(gates, k, tie_key, drop=None):
    """0/1 mask of each row's ``k`` largest ``gates`` (``[edges, ops]``), no gradient.

    ``tie_key`` (same shape, in [0, 1)) orders equal gates; ``drop`` (bool, same shape): gates
    that rank below every kept one (the reference's gate dropout).
    """
    order = tf.stop_gradient(gates)
    if drop is not None:
        order -= 2.0 * tf.cast(drop, gates.dtype)
    # A random column order per edge, then top_k (which keeps the lower index among equals).
    permutation = tf.argsort(tie_key, axis=-1, stable=True)
    _, top = tf.math.top_k(tf.gather(order, permutation, batch_dims=1), k=k)
    indices = tf.gather(permutation, top, batch_dims=1)
    return tf.reduce_sum(tf.one_hot(indices, tf.shape(gates)[-1], dtype=gates.dtype), axis=-2)


def path_edges(steps):
    """Edge indices (node-major order) of input 1 -> node 0 -> node 1 -> ... -> node steps-1."""
    starts = np.cumsum([0] + [2 + i for i in range(steps - 1)])
    return [int(start + 1 + i) for i, start in enumerate(starts)]


def _group_mean(probability, mask, members):
    """sum(P * mask) / sum(mask) over the ``members`` columns (0 where no member is on)."""
    on = mask * members
    count = tf.reduce_sum(on)
    return tf.math.divide_no_nan(tf.reduce_sum(probability * on), count)


def regularizers(probabilities, masks, groups, steps, threshold=0.2):
    """``{'skip', 'non_skip', 'pooling', 'path'}`` for the two cells (see the module docstring).

    Args:
      probabilities: ``(normal, reduce)`` activation probabilities, each ``[edges, ops]``.
      masks: ``(normal, reduce)`` 0/1 masks of the switched-on gates.
      groups: ``(normal, reduce)``, each a dict of ``[edges, ops]`` 0/1 arrays ``'skip'``,
        ``'pooling'``, ``'non_skip'``, ``'parameterised'`` (``GatedArchitecture.groups``).
      steps: intermediate nodes per cell.
      threshold: the hinge of the three group terms.
    """
    terms = {}
    for name in ("skip", "non_skip", "pooling"):
        value = sum(
            0.5 * _group_mean(p, m, tf.constant(g[name], p.dtype))
            for p, m, g in zip(probabilities, masks, groups)
        )
        terms[name] = tf.nn.relu(value - threshold)
    chain = path_edges(steps)
    path = 0.0
    for p, m, g in zip(probabilities, masks, groups):
        on = tf.gather(m, chain) * tf.constant(g["parameterised"][chain], p.dtype)
        counts = tf.reduce_sum(on, axis=-1)
        means = tf.math.divide_no_nan(tf.reduce_sum(tf.gather(p, chain) * on, axis=-1), counts)
        active = counts > 0
        product = tf.reduce_prod(tf.where(active, means, tf.ones_like(means)))
        path += 0.5 * tf.where(tf.reduce_any(active), product, tf.zeros_like(product))
    terms["path"] = path
    return terms


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GateSettings:
    """PR-DARTS' gate hyperparameters (bound in gin: ``GateSettings.tau = ...``), the reference
    search's (``test_PRDARTS.py``); ``GatedArchitecture``'s arguments of the same names."""

    tau: float = 1.0
    tau_min: float | None = 0.1
    limit_a: float = -0.1
    limit_b: float = 1.1
    top_k: int = 2
    gate_dropout: float = 0.4
    threshold: float = 0.2
    regularization: tuple = (0.01, 0.005, 0.005)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class GatedArchitecture(Architecture):
    """PR-DARTS' gates over the DARTS search space; ``alphas`` are the gate logits.

    ``run_search.gates = True`` builds it from ``GateSettings`` (bound in gin). The search draws a new gate sample at every iteration
    (``next_sample``, counted by the checkpointed ``draws``) and sets ``tau`` at every epoch
    (``start_epoch``).

    Args (beyond ``search_space.Architecture``'s):
      tau: the temperature of the first epoch (reference ``tau_max`` 1).
      tau_min: the temperature of the last epoch, reached linearly (reference 0.1); ``None``:
        ``tau`` throughout.
      limit_a, limit_b: the stretch interval, ``limit_a < 0``, ``limit_b > 1``.
      top_k: ops switched on per edge.
      gate_dropout: probability of dropping a gate before the top-k (a variable).
      threshold: hinge of the group regularisers.
      regularization: ``(lambda_1, lambda_2, lambda_3)`` of the skip, non-skip + pooling and
        path terms.
      seed: the noise stream (``resample``).
    """

    def __init__(
        self,
        *args,
        tau=GateSettings.tau,
        tau_min=GateSettings.tau_min,
        limit_a=GateSettings.limit_a,
        limit_b=GateSettings.limit_b,
        top_k=GateSettings.top_k,
        gate_dropout=GateSettings.gate_dropout,
        threshold=GateSettings.threshold,
        regularization=GateSettings.regularization,
        seed=0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        v = validation
        self.limit_a = v.check_number("limit_a", limit_a, maximum=0.0)
        self.limit_b = v.check_number("limit_b", limit_b, minimum=1.0, exclusive_minimum=True)
        if self.limit_a == 0.0:
            v.fail("limit_a", limit_a, "a finite number < 0")
        num_ops = int(self.alpha_normal.shape[-1])
        self.top_k = v.check_int("top_k", top_k, 1, num_ops)
        self.threshold = v.check_number("threshold", threshold, minimum=0.0)
        regularization = v.check_sequence("regularization", regularization, length=3)
        self.regularization = tuple(
            v.check_number(f"regularization[{i}]", x, minimum=0.0)
            for i, x in enumerate(regularization)
        )
        self.seed = v.check_int("seed", seed, minimum=0)
        tau = v.check_number("tau", tau, minimum=0.0, exclusive_minimum=True)
        self.tau_max = tau
        self.tau_min = v.check_optional(
            v.check_number, "tau_min", tau_min, minimum=0.0, exclusive_minimum=True
        )
        gate_dropout = v.check_number("gate_dropout", gate_dropout, minimum=0.0, maximum=0.99)
        self.tau = self.add_weight(name="tau", shape=(), trainable=False, initializer="ones")
        self.gate_dropout = self.add_weight(
            name="gate_dropout", shape=(), trainable=False, initializer="zeros"
        )
        # Assigned, not initialised: a Keras Constant initialiser rounds through float32.
        self.tau.assign(tf.constant(tau, self.tau.dtype))
        self.gate_dropout.assign(tf.constant(gate_dropout, self.gate_dropout.dtype))
        # [cell (normal, reduce), draw (gate noise, tie key, dropout), edges, ops]
        shape = (2, 3, num_edges(self.steps), num_ops)
        self.noise = self.add_weight(
            name="gate_noise", shape=shape, trainable=False,
            initializer=keras.initializers.Constant(0.5),
        )  # fmt: skip
        self.draws = self.add_weight(
            name="draws", shape=(), dtype="int64", trainable=False, initializer="zeros"
        )
        self.groups = tuple(self._groups(cell) for cell in range(2))

    def _groups(self, cell):
        """The 0/1 ``[edges, ops]`` membership of each regulariser group in ``cell``."""
        names = self.edge_op_names(cell)
        member = {
            "skip": lambda n: n in SKIP,
            "pooling": lambda n: n in POOLING,
            "non_skip": lambda n: n not in SKIP + POOLING,
            "parameterised": lambda n: n in PARAMETERISED,
        }
        return {
            group: np.array([[float(test(n)) for n in row] for row in names])
            for group, test in member.items()
        }

    def edge_op_names(self, cell):
        """``[edges][ops]``: the op each column of ``cell`` (0 normal, 1 reduce) stands for."""
        if self.edge_primitives is None:
            return [list(self.primitives)] * num_edges(self.steps)
        return [list(ops) for ops in self.edge_primitives[cell]]

    def resample(self, step):
        """Draws the gate noise of iteration ``step`` (stateless in ``(seed, step)``)."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        uniform = tf.random.stateless_uniform(
            self.noise.shape, seed=seed, minval=1e-6, maxval=1.0 - 1e-6, dtype=self.noise.dtype
        )
        self.noise.assign(uniform)

    def next_sample(self):
        """Draws the next sample (number ``draws``, then counted): once per search iteration."""
        self.resample(tf.convert_to_tensor(self.draws))
        self.draws.assign_add(1)

    def start_epoch(self, epoch, epochs):
        """``tau`` of ``epoch`` (of ``epochs``): linear from ``tau`` to ``tau_min``."""
        if self.tau_min is None:
            return
        fraction = epoch / (epochs - 1) if epochs > 1 else 0.0
        tau = self.tau_max - (self.tau_max - self.tau_min) * fraction
        self.tau.assign(tf.constant(tau, self.tau.dtype))

    def summary_scalars(self):
        """The gates' TensorBoard scalars: tau, the regularisers at the current sample, and
        each group's mean activation probability per cell."""
        parameters = [tf.convert_to_tensor(p) for p in self.parameters]
        values = {"prdarts/tau": float(self.tau.numpy())}
        for name, term in self.regularizer_terms(parameters).items():
            values[f"prdarts/L_{name}"] = float(term)
        for cell, probability in zip(("normal", "reduce"), self.probabilities(parameters)):
            probability = probability.numpy()
            for group, members in self.groups[cell == "reduce"].items():
                if members.any():
                    mean = float(probability[members > 0].mean())
                    values[f"prdarts/{cell}_{group}_probability"] = mean
        return values

    def _tau(self, dtype):
        """The current temperature as a tensor of ``dtype``."""
        return tf.cast(tf.convert_to_tensor(self.tau), dtype)

    def _sample(self, logits, cell):
        """(straight-through mixing weights, mask) of ``cell`` at the current noise."""
        noise = tf.cast(tf.convert_to_tensor(self.noise)[cell], logits.dtype)
        tau = self._tau(logits.dtype)
        gates = hard_concrete_gates(logits, noise[0], tau, self.limit_a, self.limit_b)
        drop = noise[2] < tf.cast(tf.convert_to_tensor(self.gate_dropout), logits.dtype)
        mask = top_k_mask(gates, self.top_k, noise[1], drop)
        return mask * (gates - tf.stop_gradient(gates)) + mask, mask

    def mixing(self, parameters):
        """Hard top-k gates (straight-through) of the current sample, for each cell kind."""
        return tuple(self._sample(logits, cell)[0] for cell, logits in enumerate(parameters[:2]))

    def evaluation_mixing(self, parameters):
        """Noise-free: each edge's top-k ops by the deterministic gate (ties: lower column)."""
        weights = []
        for logits in parameters[:2]:
            tau = self._tau(logits.dtype)
            gates = deterministic_gates(logits, tau, self.limit_a, self.limit_b)
            weights.append(top_k_mask(gates, self.top_k, tf.zeros_like(gates)))
        return tuple(weights)

    def probabilities(self, parameters):
        """``(normal, reduce)`` activation probabilities at the current ``tau``."""
        return tuple(
            activation_probability(logits, self._tau(logits.dtype), self.limit_a, self.limit_b)
            for logits in parameters[:2]
        )

    def regularizer_terms(self, parameters):
        """``regularizers`` at the current sample (the mask of ``mixing``)."""
        masks = [self._sample(logits, cell)[1] for cell, logits in enumerate(parameters[:2])]
        return regularizers(
            self.probabilities(parameters), masks, self.groups, self.steps, self.threshold
        )

    def objective_terms(self, parameters):
        """``lambda_1 L_skip + lambda_2 (L_non-skip + L_pool) - lambda_3 L_path``."""
        terms = self.regularizer_terms(parameters)
        lambda_1, lambda_2, lambda_3 = self.regularization
        return (
            lambda_1 * terms["skip"]
            + lambda_2 * (terms["non_skip"] + terms["pooling"])
            - lambda_3 * terms["path"]
        )

    def genotype(self) -> genotype_lib.Genotype:
        """The top-2 incoming edges of each node by activation probability (their strongest op
        other than 'none'), each with that op."""
        probability = [np.asarray(p) for p in self.probabilities(self.alphas)]
        # softmax(log P) * sum(P) = P: derive_genotype then ranks and picks by P itself.
        return genotype_lib.derive_genotype(
            np.log(probability[0]),
            np.log(probability[1]),
            primitives=self.primitives,
            steps=self.steps,
            multiplier=self.multiplier,
            edge_primitives=self.edge_primitives,
            edge_weight_normal=probability[0].sum(axis=-1),
            edge_weight_reduce=probability[1].sum(axis=-1),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            tau=self.tau_max,
            tau_min=self.tau_min,
            limit_a=self.limit_a,
            limit_b=self.limit_b,
            top_k=self.top_k,
            gate_dropout=float(self.gate_dropout.numpy()),
            threshold=self.threshold,
            regularization=list(self.regularization),
            seed=self.seed,
        )
        return config
