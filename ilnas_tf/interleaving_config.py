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
PROXIMAL_STEPS = ("closed_form", "gradient")
GRAD_CLIP_SCOPES = ("auto", "stage")


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
        or ``'reverse_over_reverse'`` (``stage_functions.mixed_second_derivative``; on several
        replicas always the latter, ``stage_functions``).
      unroll_steps: virtual SGD steps per stage (``exact`` mode only).
      weights_per_stage: one weight copy W_k^(m), H_k^(m) per (learner, round) stage, the
        paper's notation (default): every stage's virtual step starts from the weights its real
        step starts from, so the chain the hypergradient differentiates is the dynamics the
        weights follow. ``False``: one copy per learner, stepped M times per iteration by the
        real updates while every round's virtual step starts from the same W_k (a cheaper
        approximation, 1/M of the weight memory).
      proximal_step: how a stage with a proximal pull toward P = W̄_{s-1} steps, in the
        virtual and the real update alike. ``'closed_form'`` (default): the SGD step on the
        loss alone, Z = W - eta (mu buf + g + wd W), followed by the proximal operator of
        lambda ||. - P||^2 with step eta: W' = (Z + 2 eta lambda P) / (1 + 2 eta lambda), a
        convex combination of Z and P that never overshoots (the chain stays stable at the
        paper's lambda = 100, eta = 0.025). ``'gradient'``: the paper's literal step with
        2 lambda (W - P) inside the gradient, whose factor 1 - 2 eta lambda is -4 there (each
        link of the chain amplifies by up to 5).
      grad_clip_scope: ``'auto'`` (default): when the stages are independent (M=1, lambda=0,
        ``'proximal'`` transfer: DARTS and MTL-DARTS, one joint objective, the paper's eq. 10)
        the real step clips all learners' gradients jointly by one global norm; otherwise each
        stage's gradient separately (its stage depends on the previous stage's update).
        ``'stage'``: always per stage.
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
    weights_per_stage: bool = True
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
    proximal_step: str = "closed_form"
    grad_clip_scope: str = "auto"

    def __post_init__(self):
        def name(field):
            return f"InterleavingConfig.{field}"

        for field in ("num_learners", "rounds", "unroll_steps"):
            check.check_int(name(field), getattr(self, field), minimum=1)
        check.check_choice(name("mode"), self.mode, MODES)
        check.check_choice(name("exact_method"), self.exact_method, EXACT_METHODS)
        check.check_choice(name("hvp_method"), self.hvp_method, HVP_METHODS)
        check.check_choice(name("transfer"), self.transfer, TRANSFERS)
        check.check_choice(name("proximal_step"), self.proximal_step, PROXIMAL_STEPS)
        check.check_choice(name("grad_clip_scope"), self.grad_clip_scope, GRAD_CLIP_SCOPES)
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

    def pulls(self, stage):
        """Whether stage ``stage`` has a proximal pull toward the previous stage's W̄ (with
        ``'handover'`` too, where it starts there)."""
        return stage > 0 and self.proximal_strength > 0

    @property
    def independent_stages(self):
        """No stage depends on another within an iteration (M=1, no pull, no handover)."""
        return self.rounds == 1 and self.transfer == "proximal" and self.proximal_strength == 0

    @property
    def clip_jointly(self):
        """Whether the real step clips all stages' gradients by one joint global norm."""
        return self.grad_clip_scope == "auto" and self.independent_stages

    def val_weight(self, k):
        return 1.0 if self.val_loss_weights is None else float(self.val_loss_weights[k])

    def train_weight(self, k):
        return 1.0 if self.train_loss_weights is None else float(self.train_loss_weights[k])
