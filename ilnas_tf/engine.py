"""The interleaving-learning engine: the object that runs one search iteration.

Interleaving learning (the interleaving-learning paper, Algorithm 1): K learners share the
architecture A and learn in M rounds. One iteration is the architecture step (A follows the
hypergradient of sum_k w_k L_k^val through the chain of one-step weight updates), then the
weight step (each stage's real SGD update, in stage order), DARTS' order. The step math lives
in pure functions (``hypergradient``, ``stagewise``, ``stage_functions``) and the
configuration in ``interleaving_config``; this module holds ``InterleavingEngine``, which
checks its inputs, owns the architecture optimizer and moves tensors between the variables and
those functions.

Special cases: DARTS (Liu et al., 2019) is K=1, M=1, lambda=0; MTL-DARTS (the paper's eq. 10)
is M=1, lambda=0 (no coupling between learners) with validation weights (1, alpha) and
training-loss weights (1, beta).
"""

from __future__ import annotations

import tensorflow as tf

from ilnas_tf import distribution, hypergradient, optimizers, stagewise
from ilnas_tf.interleaving_config import (  # noqa: F401  (re-exported: engine.InterleavingConfig)
    EXACT_METHODS,
    MODES,
    TRANSFERS,
    InterleavingConfig,
)
from ilnas_tf.stage_functions import HVP_METHODS, StageFunctions  # noqa: F401

HYPERGRADIENTS = {
    ("first_order", None): hypergradient.first_order,
    ("finite_difference", None): hypergradient.finite_difference,
    ("exact", "nested_tapes"): hypergradient.exact_nested_tapes,
    ("exact", "stagewise"): stagewise.exact_stagewise,
}


def hypergradient_function(config):
    """The pure hypergradient function of ``config``'s mode (``f(problem, parameters)``)."""
    return HYPERGRADIENTS[config.mode, config.exact_method if config.mode == "exact" else None]


def chain_diagnostics(result, num_stages):
    """What TensorBoard shows of the chain (float64; zeros where the mode does not compute it).

    ``stage_hypergradient_norms[s]``: ||stage s's part of dL/dA||; ``chain_cotangent_norms[s]``:
    ||dL/dW̄_s, dL/dH̄_s||; ``chain_link_gains[s]``: how much the link from stage s back to
    stage s-1 amplifies a cotangent (``hypergradient.Result.link_gains``);
    ``chain_amplification``: their product over the chain, the factor by which the last
    stage's cotangent reaches the first stage (the paper's literal step at lambda=100,
    eta=0.025 has gains of up to 5 per link; the closed-form step's are below 1).
    """
    zeros = tf.zeros([num_stages], tf.float64)

    def stacked(values):
        if values is None:
            return zeros
        return tf.stack(
            [tf.zeros([], tf.float64) if v is None else tf.cast(v, tf.float64) for v in values]
        )

    parts = None if result is None else result.stage_parts
    norms = None
    if parts is not None:
        norms = [
            None if p is None else tf.linalg.global_norm(distribution.all_reduce(p)) for p in parts
        ]
    gains = None if result is None else result.link_gains
    return {
        "stage_hypergradient_norms": stacked(norms),
        "chain_cotangent_norms": stacked(None if result is None else result.cotangent_norms),
        "chain_link_gains": stacked(gains),
        "chain_amplification": (
            tf.reduce_prod(stacked(gains)[1:]) if gains is not None else tf.zeros([], tf.float64)
        ),
    }


class InterleavingEngine:
    """Runs interleaving-learning iterations; owns no data, summaries or checkpoints.

    The learners' trainable state lives in their flat ``LearnerState`` variables; the Keras
    encoder/head layers keep their initial weights until ``sync_layers()`` copies the trained
    ones in (the search command does so at the end). To get a trained encoder from the Python
    API: ``engine.sync_layers()``, then ``engine.learners[k].encoder``.

    Args:
      architecture: the shared ``search_space.Architecture`` (A). Its ``parameters`` are
        what the hypergradient differentiates, ``mixing(parameters)`` turns them into the
        encoders' mixing weights and ``objective_terms(parameters)`` adds to the objective.
      learners: K ``learner.Learner`` objects, indexed like ``config.interleave_order``. The
        engine adds the weight copies the config needs (``weights_per_stage``: one per round).
      config: an ``InterleavingConfig``.
      arch_optimizer: optimizer for A (default: ``optimizers.TorchAdam`` with the config's
        settings). Built here, so create the engine inside ``strategy.scope()`` when
        distributing.
      shared_stage_functions: on one replica, trace each learner's stage computations once as
        non-inlined ``tf.function``s (``stage_functions.StageFunctions``).
    """

    def __init__(
        self, architecture, learners, config, arch_optimizer=None, shared_stage_functions=True
    ):
        if len(learners) != config.num_learners:
            raise ValueError(
                f"config.num_learners={config.num_learners} but {len(learners)} learners given"
            )
        shapes = {item.image_shape for item in learners}
        if len(shapes) > 1:
            raise ValueError(
                "learners must share one image shape (they share one encoder architecture); got "
                + ", ".join(f"{item.name}: {item.image_shape}" for item in learners)
            )
        needed = config.rounds if config.weights_per_stage else 1
        for item in learners:
            if len(item.states) > needed:
                raise ValueError(
                    f"learner {item.name} has {len(item.states)} weight copies, the config needs "
                    f"{needed} (weights_per_stage={config.weights_per_stage}, rounds={config.rounds})"
                )
            item.add_states(needed - len(item.states))
        self.architecture = architecture
        self.learners = list(learners)
        self.config = config
        self.arch_optimizer = arch_optimizer or optimizers.TorchAdam(
            learning_rate=config.arch_learning_rate,
            beta_1=config.arch_beta_1,
            beta_2=config.arch_beta_2,
            epsilon=1e-8,
            coupled_weight_decay=config.arch_weight_decay,
        )
        self.arch_optimizer.build(architecture.parameters)
        self.functions = StageFunctions(
            self.learners, config.hvp_method, shared=shared_stage_functions
        )

    @property
    def dtype(self):
        """The learners' weight dtype (pass the learning rate in it)."""
        return self.learners[0].states[0].encoder_weights.dtype

    def _state(self, stage):
        _, k = self.config.stages[stage]
        return self.learners[k].states[self.config.state_index(stage)]

    def _learning_rate(self, learning_rate):
        """eta as a tensor of the weights' dtype (a Python float is not rounded to float32)."""
        if isinstance(learning_rate, tf.Tensor | tf.Variable):
            if learning_rate.dtype != self.dtype:
                raise ValueError(
                    f"learning_rate has dtype {learning_rate.dtype.name}, expected "
                    f"{self.dtype.name} (the weights' dtype; build it with tf.constant(lr, dtype))"
                )
            return tf.convert_to_tensor(learning_rate)
        return tf.constant(learning_rate, self.dtype)

    def problem(self, train_batches, val_batches, learning_rate):
        """The ``hypergradient.Problem`` of one iteration at the current variable values.

        With ``'handover'`` the first stage starts from the encoder the last stage of the
        previous iteration left (the last stage's weight copy), so the handover carries across
        iterations and every real encoder update is used.
        """
        starts = []
        for stage in range(len(self.config.stages)):
            state = self._state(stage)
            starts.append(
                hypergradient.StageStart(
                    *(
                        tf.convert_to_tensor(v)
                        for v in (
                            state.encoder_weights,
                            state.head_weights,
                            state.encoder_momentum,
                            state.head_momentum,
                        )
                    )
                )
            )
        if self.config.transfer == "handover" and starts:
            starts[0] = starts[0]._replace(encoder=starts[-1].encoder)
        return hypergradient.Problem(
            config=self.config,
            functions=self.functions,
            mixing=self.architecture.mixing,
            starts=tuple(starts),
            train_batches=tuple(train_batches),
            val_batches=tuple(val_batches),
            learning_rate=self._learning_rate(learning_rate),
        )

    def _parameters(self):
        return [tf.convert_to_tensor(p) for p in self.architecture.parameters]

    # ------------------------------------------------------------------ steps
    def arch_gradient(self, train_batches, val_batches, learning_rate):
        """dL/dA (a list like ``architecture.parameters``), validation losses and accuracies.

        L includes the architecture's ``objective_terms``. Under a strategy each replica
        returns its share (the optimizer sums them).
        """
        return self.arch_gradient_result(train_batches, val_batches, learning_rate)[:3]

    def arch_gradient_result(self, train_batches, val_batches, learning_rate):
        """The mode's full ``hypergradient.Result`` (per-stage parts, chain cotangents)."""
        problem = self.problem(train_batches, val_batches, learning_rate)
        parameters = self._parameters()
        result = hypergradient_function(self.config)(problem, parameters)
        grads = result.gradients
        with tf.GradientTape() as tape:
            tape.watch(parameters)
            extra = self.architecture.objective_terms(parameters)
            if extra is not None:  # each replica adds its share (the optimizer sums them)
                extra *= tf.constant(1.0 / distribution.num_replicas(), extra.dtype)
        if extra is not None:
            extra_grads = tape.gradient(extra, parameters)
            grads = [g if e is None else g + e for g, e in zip(grads, extra_grads)]
        return result._replace(gradients=grads)

    def apply_arch_gradient(self, grads):
        """One step of the architecture optimizer (weight decay is the optimizer's)."""
        self.arch_optimizer.apply_gradients(zip(grads, self.architecture.parameters))

    def weight_step(self, train_batches, learning_rate):
        """Real SGD steps of every stage in order; returns per-stage (loss, accuracy)."""
        problem = self.problem(train_batches, (), learning_rate)
        keys = [
            (k, self.config.state_index(stage)) for stage, (_, k) in enumerate(self.config.stages)
        ]
        states, metrics = hypergradient.weight_updates(problem, self._parameters(), keys)
        for (k, index), values in states.items():
            state = self.learners[k].states[index]
            state.encoder_momentum.assign(values.encoder_momentum)
            state.head_momentum.assign(values.head_momentum)
            state.encoder_weights.assign(values.encoder)
            state.head_weights.assign(values.head)
        return metrics

    def validation_metrics(self, val_batches):
        """Per-learner validation losses and accuracies at the current weights (no step)."""
        problem = self.problem([], val_batches, 0.0)
        finals = [
            (tf.convert_to_tensor(s.encoder_weights), tf.convert_to_tensor(s.head_weights))
            for s in (
                self._state(self.config.last_stage(k)) for k in range(self.config.num_learners)
            )
        ]
        _, losses, accs = hypergradient.validation_objective(problem, self._parameters(), finals)
        return losses, accs

    def step(self, train_batches, val_batches, learning_rate, update_architecture=True):
        """Architecture step, then weight steps (DARTS order). Returns a dict of metrics.

        Args:
          train_batches: one ``(images, labels)`` per stage, in stage order (or ``(images,
            labels, noise)`` with skip-connect dropout: ``hypergradient.Problem``).
          val_batches: one ``(images, labels)`` (or ``(images, labels, noise)``) per learner.
          learning_rate: the learners' current learning rate (eta): a Python float or a
            scalar tensor of ``dtype``.
          update_architecture: False: a weight-only step (warm-up); the validation metrics
            are then those of the current weights and the hypergradient norm is 0.
        """
        self.check_batches(train_batches, val_batches)
        num_stages = len(self.config.stages)
        if update_architecture:
            result = self.arch_gradient_result(train_batches, val_batches, learning_rate)
            grads, val_losses, val_accs = result[:3]
            self.apply_arch_gradient(grads)
            norm = tf.linalg.global_norm(distribution.all_reduce(grads))
            diagnostics = chain_diagnostics(result, num_stages)
        else:
            val_losses, val_accs = self.validation_metrics(val_batches)
            norm = tf.zeros([], self.architecture.parameters[0].dtype)
            diagnostics = chain_diagnostics(None, num_stages)
        train_metrics = self.weight_step(train_batches, learning_rate)
        reduce, mean = distribution.all_reduce, tf.distribute.ReduceOp.MEAN
        return {
            **diagnostics,
            "hypergradient_norm": norm,
            "val_loss": reduce(tf.stack(val_losses)),
            "val_accuracy": reduce(tf.stack(val_accs), mean),
            "train_loss": reduce(tf.stack([m[0] for m in train_metrics])),
            "train_accuracy": reduce(tf.stack([m[1] for m in train_metrics]), mean),
        }

    def distributed_step(
        self, strategy, train_batches, val_batches, learning_rate, update_architecture=True
    ):
        """Runs ``step`` on every replica of ``strategy`` (call inside a ``tf.function``).

        ``train_batches``/``val_batches`` are per-replica values (e.g. from a distributed
        dataset). The architecture draws its next sample first (``next_sample``), so every
        replica sees the same one. Returns the metrics of the first replica (they are all-reduced already).
        """
        # Stochastic architectures: one sample per iteration (plain TF ops, nothing for
        # autograph to convert; converting the DARTS no-op leaves a temp file behind).
        tf.autograph.experimental.do_not_convert(self.architecture.next_sample)()
        metrics = strategy.run(
            self.step, args=(train_batches, val_batches, learning_rate, update_architecture)
        )
        return {k: strategy.experimental_local_results(v)[0] for k, v in metrics.items()}

    def sync_layers(self):
        """Copies every learner's trained flat weights into its Keras encoder and head."""
        for item in self.learners:
            item.sync_layers()

    def check_batches(self, train_batches, val_batches):
        """Raises ``ValueError`` naming the mismatch if batches do not fit the stages/learners."""
        cfg = self.config
        if len(train_batches) != len(cfg.stages):
            raise ValueError(
                f"{len(train_batches)} train batches given, expected one per stage ({len(cfg.stages)})"
            )
        if len(val_batches) != cfg.num_learners:
            raise ValueError(
                f"{len(val_batches)} validation batches given, expected {cfg.num_learners}"
            )
        for where, batches, owners in (
            ("train", train_batches, [k for _, k in cfg.stages]),
            ("validation", val_batches, list(range(cfg.num_learners))),
        ):
            for i, ((images, *_), k) in enumerate(zip(batches, owners)):
                expected = self.learners[k].image_shape
                if tuple(images.shape[1:]) != expected:
                    raise ValueError(
                        f"{where} batch {i} for learner {self.learners[k].name} has images of "
                        f"shape {tuple(images.shape[1:])}, expected {expected}"
                    )
