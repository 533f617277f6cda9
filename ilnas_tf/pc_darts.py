"""PC-DARTS' architecture: op logits alpha and edge-normalisation logits beta.

PC-DARTS (Xu et al., 2020, "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search"; yuhuixu1993/PC-DARTS ``model_search.py``) changes DARTS in two ways:

* *Partial channel connections*: each edge sends only ``1 / K`` of its input's channels through
  its candidate ops and lets the rest bypass them (``SearchEncoder(partial_channels=K)``; the
  cells implement it, ``search_cell.SearchCellBase``).
* *Edge normalisation* (this module): every edge ``e`` into intermediate node ``i`` has a logit
  ``beta_e``; the node's incoming edges are weighted by the softmax of their betas over that
  node's ``2 + i`` edges, which multiplies the edge's whole output (ops and bypass). The betas
  belong to the shared architecture A: the architecture optimiser updates them and every
  hypergradient mode differentiates with respect to them (they are ``parameters``).

``EdgeNormalizedArchitecture.mixing`` returns ``softmax(alpha_e) * beta_hat_e`` per edge: the
cells recover the edge weight ``beta_hat_e`` as the sum of the edge's row (a softmax sums to 1),
so the encoders' call signature is DARTS'. The genotype ranks the edges into each node by
``max over ops other than 'none' of softmax(alpha) * beta_hat`` and picks each kept edge's op
by alpha, as the reference does.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf.search_space import Architecture, num_edges

__all__ = ["EdgeNormalizedArchitecture", "edge_normalized_weights", "node_edge_ranges"]


def node_edge_ranges(steps: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: the incoming edges of each intermediate node (node-major order)."""
    ranges, start = [], 0
    for node in range(steps):
        ranges.append((start, start + 2 + node))
        start += 2 + node
    return ranges


def edge_normalized_weights(beta, steps: int):
    """``beta_hat``: the softmax of ``beta`` (``[num_edges]``) over each node's incoming edges."""
    return tf.concat([tf.nn.softmax(beta[a:b]) for a, b in node_edge_ranges(steps)], axis=0)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class EdgeNormalizedArchitecture(Architecture):
    """DARTS' alphas plus PC-DARTS' edge-normalisation betas (``beta_normal``, ``beta_reduce``).

    Args: as ``search_space.Architecture``; the betas, shape ``(num_edges,)``, are initialised
    like the alphas (``init_scale * N(0, 1)``; the reference's ``1e-3 * randn``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shape = (num_edges(self.steps),)
        self.beta_normal = self.add_logits("beta_normal", shape)
        self.beta_reduce = self.add_logits("beta_reduce", shape)

    @property
    def betas(self) -> list:
        """``[beta_normal, beta_reduce]``."""
        return [self.beta_normal, self.beta_reduce]

    @property
    def parameters(self) -> list:
        """``[alpha_normal, alpha_reduce, beta_normal, beta_reduce]`` (the reference's order)."""
        return [self.alpha_normal, self.alpha_reduce, self.beta_normal, self.beta_reduce]

    def mixing(self, parameters):
        """``softmax(alpha) * beta_hat[:, None]`` for each cell kind (rows sum to ``beta_hat``)."""
        alpha_normal, alpha_reduce, beta_normal, beta_reduce = parameters
        return tuple(
            tf.nn.softmax(alpha, axis=-1)
            * tf.cast(edge_normalized_weights(beta, self.steps), alpha.dtype)[:, None]
            for alpha, beta in ((alpha_normal, beta_normal), (alpha_reduce, beta_reduce))
        )

    def edge_weights(self):
        """``(beta_hat_normal, beta_hat_reduce)`` as NumPy arrays (the derivation's edge weights)."""
        return tuple(
            edge_normalized_weights(tf.convert_to_tensor(b), self.steps).numpy() for b in self.betas
        )

    def genotype(self) -> genotype_lib.Genotype:
        """PC-DARTS' derivation: edges ranked by alpha-softmax x beta_hat, ops by alpha."""
        normal, reduce = self.edge_weights()
        return genotype_lib.derive_genotype(
            np.asarray(self.alpha_normal.numpy()),
            np.asarray(self.alpha_reduce.numpy()),
            primitives=self.primitives,
            steps=self.steps,
            multiplier=self.multiplier,
            edge_primitives=self.edge_primitives,
            edge_weight_normal=normal,
            edge_weight_reduce=reduce,
        )
