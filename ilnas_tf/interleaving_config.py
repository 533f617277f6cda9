"""The configuration of an interleaving-learning search step (gin: ``InterleavingConfig.*``).

Everything but the data, the networks and the learning-rate schedule: K, M, the interleaving
order, the proximal coupling, the hypergradient mode and the optimizers' hyperparameters.
Every default lives here once; gin files bind the fields directly (``InterleavingConfig.rounds
= 2``).
"""

from __future__ import annotations

import dataclasses
import functools

import gin
from ilnas_tf import validation as check
from ilnas_tf.stage_functions import HVP_METHODS

MODES = ("exact", "finite_difference", "first_order")
TRANSFERS = ("proximal", "handover")
EXACT_METHODS = ("stagewise", "nested_tapes")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InterleavingConfig:
    """Hyperparameters of the search step (everything but the data, networks and schedule).

    Attributes:
      num_learners: K.
      rounds: M.
      interleave_order: learner indices of one round (default ``0..K-1``).
      proximal_strength: lambda of the proximal term lambda ||W_k - W̄_prev||^2.
      transfer: ``'proximal'`` (pull toward the previous stage's W̄) or ``'handover'`` (start
        from it).
      mode: ``'exact'``, ``'finite_difference'`` or ``'first_order'`` (see ``hypergradient``).
      exact_method: how ``mode='exact'`` computes the hypergradient: ``'stagewise'`` (stage by
        stage with recomputation, memory of one stage; ``stagewise``) or ``'nested_tapes'`` (one
        tape around the whole chain).
      hvp_method: the stage-wise method's mixed second derivative: ``'forward_over_reverse'``
        or ``'reverse_over_reverse'`` (``stage_functions.mixed_second_derivative``).
      unroll_steps: virtual SGD steps per stage (``exact`` mode only).
      weights_per_stage: one weight copy per (learner, round) stage instead of per learner.
      val_loss_weights: w_k of the validation objective (default all 1).
      train_loss_weights: weights c_k of each learner's training loss (default all 1).
      momentum, weight_decay, grad_clip: the learners' SGD (PyTorch semantics; the real step
        clips the gradient's global norm to ``grad_clip``).
      arch_learning_rate, arch_beta_1, arch_beta_2, arch_weight_decay: PyTorch Adam for A
        (``optimizers.TorchAdam``: coupled L2 weight decay).
      fd_scale: r of the finite-difference step eps = r / ||v||.
    """

    num_learners: int = 1
    rounds: int = 1
    interleave_order: tuple | None = None
    proximal_strength: float = 0.0
    transfer: str = "proximal"
    mode: str = "exact"
    exact_method: str = "stagewise"
    hvp_method: str = "forward_over_reverse"
    unroll_steps: int = 1
    weights_per_stage: bool = False
    val_loss_weights: tuple | None = None
    train_loss_weights: tuple | None = None
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_weight_decay: float = 1e-3
    fd_scale: float = 0.01

    def __post_init__(self):
        def name(field):
            return f"InterleavingConfig.{field}"

        for field in ("num_learners", "rounds", "unroll_steps"):
            check.check_int(name(field), getattr(self, field), minimum=1)
        check.check_choice(name("mode"), self.mode, MODES)
        check.check_choice(name("exact_method"), self.exact_method, EXACT_METHODS)
        check.check_choice(name("hvp_method"), self.hvp_method, HVP_METHODS)
        check.check_choice(name("transfer"), self.transfer, TRANSFERS)
        check.check_bool(name("weights_per_stage"), self.weights_per_stage)
        check.check_number(name("proximal_strength"), self.proximal_strength, minimum=0)
        if self.unroll_steps != 1 and self.mode != "exact":
            check.fail(name("unroll_steps"), self.unroll_steps, "1 unless mode='exact'")
        if self.interleave_order is not None:
            order = check.check_sequence(
                name("interleave_order"), self.interleave_order, item=check.check_int
            )
            if sorted(order) != list(range(self.num_learners)):
                check.fail(
                    name("interleave_order"),
                    self.interleave_order,
                    f"a permutation of 0..{self.num_learners - 1}",
                )
        for field in ("val_loss_weights", "train_loss_weights"):
            value = getattr(self, field)
            if value is not None:
                check.check_sequence(
                    name(field),
                    value,
                    length=self.num_learners,
                    item=functools.partial(check.check_number, minimum=0),
                )
        for field in ("momentum", "weight_decay", "arch_weight_decay"):
            check.check_number(name(field), getattr(self, field), minimum=0)
        for field in ("grad_clip", "fd_scale", "arch_learning_rate"):
            check.check_number(name(field), getattr(self, field), 0, exclusive_minimum=True)
        for field in ("arch_beta_1", "arch_beta_2"):
            check.check_number(name(field), getattr(self, field), minimum=0, maximum=1)

    @property
    def order(self):
        """Learner indices of one round."""
        if self.interleave_order is None:
            return tuple(range(self.num_learners))
        return tuple(int(k) for k in self.interleave_order)

    @property
    def stages(self):
        """``[(round, learner), ...]`` in learning order: K * M stages."""
        return [(m, k) for m in range(self.rounds) for k in self.order]

    def state_index(self, stage):
        """Index of the ``LearnerState`` a stage trains."""
        round_index, _ = self.stages[stage]
        return round_index if self.weights_per_stage else 0

    def last_stage(self, learner):
        """The stage of ``learner`` in the last round."""
        return max(s for s, (_, k) in enumerate(self.stages) if k == learner)

    def val_weight(self, k):
        return 1.0 if self.val_loss_weights is None else float(self.val_loss_weights[k])

    def train_weight(self, k):
        return 1.0 if self.train_loss_weights is None else float(self.train_loss_weights[k])
