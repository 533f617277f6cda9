"""The step math of interleaving learning as pure functions: tensors in, tensors out.

The interleaving-learning paper (Algorithm 1, eqs. 5-9): K learners share the architecture A
and learn in M rounds in ``config.order`` repeated M times, the *stages* s = 0 .. K*M-1.
Stage s (learner k) has the one-step optimum

    W̄_s = W_k - eta * (mu * buf_k + ∇_W [c_k L_k^tr(A, W_k, H_k) + lambda ||W_k - W̄_{s-1}||^2]
                       + wd * W_k)                                         (eqs. 6-7)

(the real optimizer's step, momentum and weight decay included, as the DARTS reference's
virtual step; no proximal term at s = 0; ``transfer='handover'`` starts from W̄_{s-1} instead)
and H̄_s from the same gradient (eq. 8). The architecture objective is

    L(A) = sum_k w_k L_k^val(A, W̄_k^(M), H̄_k^(M))                       (eq. 9)

Everything here takes a ``Problem`` (the configuration, the stage computations, how A becomes
mixing weights, each stage's starting tensors, the batches and eta) and returns tensors; the
engine owns the variables and the optimizers and dispatches on the mode:

* ``first_order``: ∇_A of the validation objective at the current weights.
* ``finite_difference``: DARTS' approximation (Liu et al., 2019, eqs. 7-8, HEAD semantics)
  per learner's last stage: ∇_A L^val(W̄, H̄) - eta (∇_A L^tr(W+) - ∇_A L^tr(W-)) / 2 eps with
  W± = W ± eps ∇_{W̄,H̄} L^val at the *current* weights, eps = r / ||∇ L^val||; W̄_{s-1} is a
  constant (cross-stage terms dropped).
* ``exact`` with ``exact_method='nested_tapes'``: one tape around the whole unrolled chain.
* ``exact`` with ``exact_method='stagewise'``: reverse accumulation stage by stage with
  recomputation (``stagewise.exact_stagewise``), the memory of one stage's second-order tape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from ilnas_tf import distribution, optimizers, precision
from ilnas_tf.learner import accuracy


class StageStart(NamedTuple):
    """A stage's starting point: the flat weights and momentum buffers of its weight copy."""

    encoder: tf.Tensor
    head: tf.Tensor
    encoder_momentum: tf.Tensor
    head_momentum: tf.Tensor


class Result(NamedTuple):
    """What a hypergradient mode returns.

    Attributes:
      gradients: dL/dA, a list like the parameters (this replica's share).
      val_losses, val_accuracies: per learner, at the weights the objective is evaluated at.
      stage_parts: per stage, that stage's virtual steps' part of ``gradients`` (a list like
        the parameters), or None where the mode does not decompose it; the direct validation
        part is the rest.
      cotangent_norms: per stage, ||dL/dW̄_s, dL/dH̄_s|| (the cotangent of stage s's
        output), or None where the mode does not compute it.
      link_gains: per stage s > 0, ||part of dL/dW̄_{s-1} coming through stage s|| /
        ||dL/dW̄_s||: how much one link of the chain amplifies a cotangent on its way back
        (0 at stage 0); None where the mode does not compute it.
    """

    gradients: list
    val_losses: list
    val_accuracies: list
    stage_parts: list | None = None
    cotangent_norms: list | None = None
    link_gains: list | None = None


class Problem(NamedTuple):
    """Everything one iteration's step math needs besides A.

    Attributes:
      config: the ``engine.InterleavingConfig``.
      functions: a ``stage_functions.StageFunctions`` over the learners.
      mixing: ``mixing(parameters) -> (weights_normal, weights_reduce)`` (the architecture's).
      starts: one ``StageStart`` per stage (the values of the stage's weight copy now).
      train_batches: one ``(images, labels)`` per stage (or ``(images, labels, noise)``: the
        noise ids of P-DARTS' skip-connect dropout, ``data.with_noise_ids``).
      val_batches: one ``(images, labels)`` (or ``(images, labels, noise)``) per learner.
      learning_rate: eta, a scalar tensor in the weights' dtype.
    """

    config: Any
    functions: Any
    mixing: Any
    starts: tuple
    train_batches: tuple
    val_batches: tuple
    learning_rate: tf.Tensor


# ---------------------------------------------------------------------- small helpers
def serialized(deps, tensors):
    """``tensors`` behind control dependencies on ``deps`` (in graphs).

    Serialises the stages: a stage's computation starts only once the previous one has
    finished, so at most one stage's intermediate tensors are alive at a time.
    """
    deps = [d for d in tf.nest.flatten(deps) if d is not None]
    if not deps or tf.executing_eagerly():
        return tensors
    with tf.control_dependencies(deps):
        return tf.nest.map_structure(tf.identity, tensors)


def _add(*terms):
    """Sum of the terms that are not None (None when there is none)."""
    terms = [t for t in terms if t is not None]
    return tf.add_n(terms) if len(terms) > 1 else (terms[0] if terms else None)


def _scale(weight, tensor):
    return tensor if weight == 1.0 or tensor is None else weight * tensor


def batch_arguments(batch):
    """A batch's tensors as stage-function arguments: ``(images, labels[, noise])``."""
    return tuple(batch)


def _learner_loss(problem, k, encoder, head, mixing, batch):
    return problem.functions.learners[k].loss(encoder, head, mixing, *batch_arguments(batch))


def virtual_step(config, weights, momentum, gradient, learning_rate):
    """One step of the learners' real optimizer (PyTorch SGD, coupled weight decay)."""
    return optimizers.sgd_step(
        weights, momentum, gradient, learning_rate, config.momentum, config.weight_decay
    )


def closed_form(config, stage):
    """Whether stage ``stage`` applies its proximal pull in closed form (after the step)."""
    return config.pulls(stage) and config.proximal_step == "closed_form"


def proximal_pull(config, stage, encoder, previous, learning_rate):
    """The proximal operator of lambda ||W - P||^2 with step eta, when the stage has one.

    W' = (Z + 2 eta lambda P) / (1 + 2 eta lambda): a convex combination of the plain step's
    result Z and P = W̄_{s-1}. Identity unless ``closed_form(config, stage)``.
    """
    if not closed_form(config, stage):
        return encoder
    pull = 2.0 * config.proximal_strength * learning_rate
    return (encoder + pull * previous) / (1.0 + pull)


def stage_step(problem, stage, weights, gradients, previous):
    """One (virtual or real) SGD step of a stage, its proximal pull included.

    Args:
      problem: the iteration's ``Problem``.
      stage: the stage index.
      weights: ``(encoder, head, encoder_momentum, head_momentum)``.
      gradients: ``(g_encoder, g_head)`` from ``stage_gradient`` (the proximal gradient is
        inside ``g_encoder`` only for ``proximal_step='gradient'``).
      previous: W̄_{s-1} (None at stage 0).

    Returns:
      The stepped ``(encoder, head, encoder_momentum, head_momentum)``.
    """
    cfg, lr = problem.config, problem.learning_rate
    encoder, head, enc_buf, head_buf = weights
    encoder, enc_buf = virtual_step(cfg, encoder, enc_buf, gradients[0], lr)
    head, head_buf = virtual_step(cfg, head, head_buf, gradients[1], lr)
    encoder = proximal_pull(cfg, stage, encoder, previous, lr)
    return StageStart(encoder, head, enc_buf, head_buf)


# ---------------------------------------------------------------------- one stage
def stage_objective(problem, stage, encoder, head, previous, mixing):
    """c_k L_k^tr + lambda ||W - W_prev||^2 (this replica's share), the loss and the logits.

    The proximal term only for ``proximal_step='gradient'`` (in closed form it is applied
    after the step, ``proximal_pull``) and when ``previous`` is given.
    """
    cfg = problem.config
    _, k = cfg.stages[stage]
    loss, logits = _learner_loss(problem, k, encoder, head, mixing, problem.train_batches[stage])
    objective = cfg.train_weight(k) * loss
    if previous is not None and cfg.pulls(stage) and not closed_form(cfg, stage):
        # Each replica adds its share: the all-reduced gradient sums the shares.
        strength = cfg.proximal_strength / distribution.num_replicas()
        objective += strength * tf.reduce_sum(tf.square(encoder - previous))
    return objective, loss, logits


def stage_gradient(problem, stage, encoder, head, previous, mixing, after=()):
    """All-reduced ∇_{W,H} of the stage objective (proximal part analytic), loss, logits."""
    cfg = problem.config
    _, k = cfg.stages[stage]
    batch = batch_arguments(problem.train_batches[stage])
    args = serialized(after, (encoder, head, mixing[0], mixing[1]) + batch)
    g_encoder, g_head, loss, logits = problem.functions.gradient(k)(*args)
    g_encoder, g_head = distribution.all_reduce([g_encoder, g_head])
    weight = cfg.train_weight(k)
    g_encoder, g_head = _scale(weight, g_encoder), _scale(weight, g_head)
    if previous is not None and cfg.pulls(stage) and not closed_form(cfg, stage):
        g_encoder += 2.0 * cfg.proximal_strength * (encoder - previous)
    return g_encoder, g_head, loss, logits


# ---------------------------------------------------------------------- the chain
def unrolled_chain(problem, parameters, differentiable=True):
    """W̄_s, H̄_s for every stage (eqs. 6-8): a list of ``(encoder, head)`` tensors.

    Differentiable w.r.t. ``parameters`` (A) through every stage. With
    ``differentiable=False`` each stage's predecessor is a constant (the finite-difference
    mode) and only first-order tapes are recorded.
    """
    cfg = problem.config
    mixing = problem.mixing(parameters)
    previous, chain = None, []
    for stage, start in enumerate(problem.starts):
        weights = start
        if cfg.transfer == "handover" and previous is not None:
            weights = weights._replace(encoder=previous)
        for _ in range(cfg.unroll_steps):
            encoder, head = weights[:2]
            with tf.GradientTape() as tape:
                tape.watch([encoder, head])
                objective, _, _ = stage_objective(problem, stage, encoder, head, previous, mixing)
            grads = distribution.all_reduce(tape.gradient(objective, [encoder, head]))
            weights = stage_step(problem, stage, weights, grads, previous)
        encoder, head = weights[:2]
        if not differentiable:
            encoder, head = tf.stop_gradient(encoder), tf.stop_gradient(head)
        chain.append((encoder, head))
        previous = encoder
    return chain


def validation_objective(problem, parameters, finals):
    """sum_k w_k L_k^val at ``finals[k] = (encoder, head)``; also per-learner losses, accuracies."""
    cfg = problem.config
    mixing = problem.mixing(parameters)
    total, losses, accuracies = 0.0, [], []
    for k in range(cfg.num_learners):
        loss, logits = _learner_loss(
            problem, k, finals[k][0], finals[k][1], mixing, problem.val_batches[k]
        )
        total += cfg.val_weight(k) * loss
        losses.append(loss)
        accuracies.append(accuracy(logits, problem.val_batches[k][1]))
    return total, losses, accuracies


def current_weights(problem):
    """Each learner's (encoder, head) at its last stage's starting point (no step taken)."""
    cfg = problem.config
    return [problem.starts[cfg.last_stage(k)][:2] for k in range(cfg.num_learners)]


# ---------------------------------------------------------------------- the modes
def first_order(problem, parameters):
    """∇_A of the validation objective at the current weights (loss-scaled under float16 as
    the stage computations are, ``precision``)."""
    scale = precision.shared_loss_scale(problem.functions.learners)
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        total, losses, accs = validation_objective(problem, parameters, current_weights(problem))
        scaled = precision.scale_loss(total, scale)
    grads = tape.gradient(scaled, parameters)
    if scale is not None:
        grads = list(precision.unscale(grads, scale))
    return Result(grads, losses, accs)


def exact_nested_tapes(problem, parameters):
    """The exact hypergradient by one tape around the whole unrolled chain."""
    cfg = problem.config
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        chain = unrolled_chain(problem, parameters)
        finals = [chain[cfg.last_stage(k)] for k in range(cfg.num_learners)]
        total, losses, accs = validation_objective(problem, parameters, finals)
    return Result(tape.gradient(total, parameters), losses, accs)


def finite_difference(problem, parameters):
    """DARTS' central-difference approximation per learner's last stage (module docstring)."""
    cfg = problem.config
    chain = unrolled_chain(problem, parameters, differentiable=False)
    grads = [tf.zeros_like(p) for p in parameters]
    losses, accs = [], []
    stage_parts = [None] * len(problem.starts)
    for k in range(cfg.num_learners):
        stage = cfg.last_stage(k)
        encoder_bar, head_bar = chain[stage]
        with tf.GradientTape() as tape:
            tape.watch(parameters + [encoder_bar, head_bar])
            loss, logits = _learner_loss(
                problem,
                k,
                encoder_bar,
                head_bar,
                problem.mixing(parameters),
                problem.val_batches[k],
            )
            weighted = cfg.val_weight(k) * loss
        direct = tape.gradient(weighted, parameters + [encoder_bar, head_bar])
        v_enc, v_head = distribution.all_reduce(direct[-2:])
        encoder, head = problem.starts[stage][:2]
        if cfg.transfer == "handover" and stage > 0:
            encoder = chain[stage - 1][0]
        norm = tf.sqrt(tf.reduce_sum(tf.square(v_enc)) + tf.reduce_sum(tf.square(v_head)))
        eps = cfg.fd_scale / tf.maximum(norm, tf.constant(1e-30, norm.dtype))
        plus, minus = (
            _train_parameter_gradient(
                problem, parameters, stage, encoder + sign * eps * v_enc, head + sign * eps * v_head
            )
            for sign in (1.0, -1.0)
        )
        lr = problem.learning_rate
        if closed_form(cfg, stage):  # dW̄/dZ = 1 / (1 + 2 eta lambda)
            lr = lr / (1.0 + 2.0 * cfg.proximal_strength * lr)
        corrections = [-lr * (p - m) / (2.0 * eps) for p, m in zip(plus, minus)]
        grads = [g + d + c for g, d, c in zip(grads, direct, corrections)]
        stage_parts[stage] = corrections
        losses.append(loss)
        accs.append(accuracy(logits, problem.val_batches[k][1]))
    return Result(grads, losses, accs, stage_parts)


def _train_parameter_gradient(problem, parameters, stage, encoder, head):
    """∇_A of the stage's training objective at fixed weights (no proximal term)."""
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        objective, _, _ = stage_objective(
            problem, stage, encoder, head, None, problem.mixing(parameters)
        )
    return tape.gradient(objective, parameters)


# ---------------------------------------------------------------------- the weight step
def weight_updates(problem, parameters, state_keys):
    """The real SGD steps of every stage in order (DARTS: after the architecture step).

    Learner k's stage takes a PyTorch SGD step on c_k L_k^tr + lambda ||W_k - W_prev||^2 (the
    proximal part as ``config.proximal_step`` says) with the loss gradient clipped by global
    norm (``optimizers.clip_by_global_norm``; jointly over all stages when
    ``config.clip_jointly``), W_prev being the previous stage's freshly updated encoder (a
    constant); with ``'handover'`` learner k starts from W_prev. Stages that share a weight
    copy (``state_keys[s]`` equal) update it in turn.

    Args:
      problem: the iteration's ``Problem`` (``starts`` give each copy's values before).
      parameters: A (held constant here).
      state_keys: one hashable key per stage naming its weight copy.

    Returns:
      ``(states, metrics)``: ``{key: StageStart}`` of the updated copies and one
      ``(loss, accuracy)`` per stage.
    """
    cfg = problem.config
    mixing = problem.mixing([tf.stop_gradient(p) for p in parameters])
    if cfg.clip_jointly:
        return _joint_weight_updates(problem, mixing, state_keys)
    states = {}
    previous, metrics, gate = None, [], ()
    for stage, key in enumerate(state_keys):
        weights = states.get(key, problem.starts[stage])
        if cfg.transfer == "handover" and previous is not None:
            weights = weights._replace(encoder=previous)
        g_encoder, g_head, loss, logits = stage_gradient(
            problem, stage, weights.encoder, weights.head, previous, mixing, gate
        )
        grads, _ = optimizers.clip_by_global_norm([g_encoder, g_head], cfg.grad_clip)
        gate = grads
        states[key] = stage_step(problem, stage, weights, grads, previous)
        previous = tf.stop_gradient(states[key].encoder)
        metrics.append((loss, accuracy(logits, problem.train_batches[stage][1])))
    return states, metrics


def _joint_weight_updates(problem, mixing, state_keys):
    """Independent stages (MTL, eq. 10): one clip of all stages' gradients, then the steps."""
    gradients, metrics, gate = [], [], ()
    for stage, start in enumerate(problem.starts):
        g_encoder, g_head, loss, logits = stage_gradient(
            problem, stage, start.encoder, start.head, None, mixing, gate
        )
        gate = (g_encoder, g_head)
        gradients += [g_encoder, g_head]
        metrics.append((loss, accuracy(logits, problem.train_batches[stage][1])))
    clipped, _ = optimizers.clip_by_global_norm(gradients, problem.config.grad_clip)
    states = {}
    for stage, key in enumerate(state_keys):
        grads = clipped[2 * stage : 2 * stage + 2]
        states[key] = stage_step(problem, stage, problem.starts[stage], grads, None)
    return states, metrics
