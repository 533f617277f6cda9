"""The exact hypergradient by stage-wise reverse accumulation with recomputation.

The nested-tape method keeps the second-order tape of the whole K*M-stage chain alive. This
one runs the chain forward once with first-order tapes only, keeping each virtual step's flat
inputs (W, H and the momentum buffers: a few vectors per step), then walks the stages
backwards. For each virtual step

    buf' = mu buf + g + wd W,   W' = W - eta buf',   g = c_k ∇L^tr(W, H, A) + 2 lambda (W - W_prev)

(the same for H, without the proximal part) and cotangents (v_W', v_buf') of its outputs, the
cotangent of buf' is beta = v_buf' - eta v_W'; then

    v_buf = mu beta,   v_W = v_W' + wd beta + (∂g/∂W)^T beta,   v_A += (∂g/∂A)^T beta,
    v_{W_prev} += -2 lambda beta

(plus v_W itself into W̄_{s-1} with ``'handover'``, where W̄_{s-1} is the starting point).
With ``proximal_step='closed_form'`` the pull is not in g but after the step,
W' = (Z + p W_prev) / (1 + p) with p = 2 eta lambda: Z receives v_W' / (1 + p) and W_prev
p v_W' / (1 + p). Each stage's part of dL/dA and the norm of the cotangent reaching its output
are returned too (``hypergradient.Result``), so summaries can show when the chain explodes.
(∂g/∂(A, W))^T beta is one mixed second derivative of the training loss on that step only
(``stage_functions.mixed_second_derivative``), so the memory is one stage's second-order tape.
The result equals the nested tapes up to round-off (tested to 1e-9 relative in float64).
"""

from __future__ import annotations

import tensorflow as tf

from ilnas_tf import distribution
from ilnas_tf.hypergradient import (
    Result,
    _add,
    _scale,
    batch_arguments,
    closed_form,
    serialized,
    stage_gradient,
    stage_step,
)
from ilnas_tf.learner import accuracy


def _forward(problem, mixing):
    """The chain with first-order tapes: per stage, each virtual step's inputs and the output."""
    cfg = problem.config
    inputs, outputs, gate, previous = [], [], (), None
    for stage, start in enumerate(problem.starts):
        weights = start
        if cfg.transfer == "handover" and previous is not None:
            weights = weights._replace(encoder=previous)
        steps = []
        for _ in range(cfg.unroll_steps):
            steps.append(weights[:2])
            g_encoder, g_head, _, _ = stage_gradient(
                problem, stage, weights.encoder, weights.head, previous, mixing, gate
            )
            gate = (g_encoder, g_head)
            weights = stage_step(problem, stage, weights, (g_encoder, g_head), previous)
        inputs.append(steps)
        outputs.append(weights[:2])
        previous = weights.encoder
    return inputs, outputs, gate


def _validation_cotangents(problem, mixing, outputs, gate):
    """Cotangents of the validation objective w.r.t. each last stage's (W̄, H̄) and the mixing.

    The (W̄, H̄) cotangents are all-reduced: every replica carries the global objective's.
    """
    cfg = problem.config
    num_stages = len(problem.starts)
    cot_encoder, cot_head = [None] * num_stages, [None] * num_stages
    cot_mixing = [tf.zeros_like(m) for m in mixing]
    losses, accs = [], []
    for k in range(cfg.num_learners):
        stage = cfg.last_stage(k)
        batch = batch_arguments(problem.val_batches[k])
        labels = batch[1]
        args = serialized(gate, outputs[stage] + (mixing[0], mixing[1]) + batch)
        loss, logits, d_encoder, d_head, d_normal, d_reduce = problem.functions.validation(k)(*args)
        gate = (d_encoder, d_head)
        weight = cfg.val_weight(k)
        d_encoder, d_head = distribution.all_reduce([d_encoder, d_head])
        cot_encoder[stage] = _scale(weight, d_encoder)
        cot_head[stage] = _scale(weight, d_head)
        cot_mixing = [c + _scale(weight, d) for c, d in zip(cot_mixing, (d_normal, d_reduce))]
        losses.append(loss)
        accs.append(accuracy(logits, labels))
    return cot_encoder, cot_head, cot_mixing, losses, accs, gate


def _backward_stage(problem, stage, steps, mixing, v_encoder, v_head, gate):
    """Pulls the cotangents of stage ``stage``'s output back through its virtual steps.

    Returns this stage's part of the mixing cotangent, the cotangent reaching W̄_{s-1} (or
    None) and the gate for serialisation.
    """
    cfg = problem.config
    _, k = cfg.stages[stage]
    weight = cfg.train_weight(k)
    lam = cfg.proximal_strength
    handover = cfg.transfer == "handover"
    closed = closed_form(cfg, stage)
    proximal = cfg.pulls(stage) and not closed  # the pull's gradient is inside g
    lr = problem.learning_rate
    pull = 2.0 * lam * lr
    v_enc_buf = v_head_buf = v_previous = None
    images, labels, *noise = batch_arguments(problem.train_batches[stage])
    part = [tf.zeros_like(m) for m in mixing]
    for step in reversed(range(cfg.unroll_steps)):
        encoder, head = steps[step]
        if closed and v_encoder is not None:
            # W' = (Z + pull P) / (1 + pull): Z gets v / (1 + pull), P gets pull v / (1 + pull).
            v_encoder = v_encoder / (1.0 + pull)
            v_previous = _add(v_previous, pull * v_encoder)
        beta_encoder = _add(v_enc_buf, None if v_encoder is None else -lr * v_encoder)
        beta_head = _add(v_head_buf, None if v_head is None else -lr * v_head)
        if beta_encoder is None:
            beta_encoder = tf.zeros_like(encoder)
        if beta_head is None:
            beta_head = tf.zeros_like(head)
        # The step's inputs carry A only for later virtual steps or, with handover, as the
        # previous stage's W̄.
        with_weights = step > 0 or (handover and stage > 0)
        args = (encoder, head, mixing[0], mixing[1], images, labels)
        args = serialized(gate, args + (beta_encoder, beta_head) + tuple(noise))
        parts = problem.functions.mixed(k, with_weights)(*args)
        gate = parts
        part = [c + _scale(weight, p) for c, p in zip(part, parts[:2])]
        if proximal:
            v_previous = _add(v_previous, -2.0 * lam * beta_encoder)
        if not with_weights:
            break
        h_encoder, h_head = distribution.all_reduce(list(parts[2:]))
        h_encoder, h_head = _scale(weight, h_encoder), _scale(weight, h_head)
        if proximal:
            h_encoder += 2.0 * lam * beta_encoder
        v_encoder = _add(v_encoder, cfg.weight_decay * beta_encoder, h_encoder)
        v_head = _add(v_head, cfg.weight_decay * beta_head, h_head)
        v_enc_buf, v_head_buf = cfg.momentum * beta_encoder, cfg.momentum * beta_head
    into_previous = None
    if stage > 0:
        into_previous = _add(v_previous, v_encoder if handover else None)
    return part, into_previous, gate


def _pull_back(problem, parameters, cotangent):
    """The A-gradient of a mixing-weight cotangent, through the architecture's mixing."""
    with tf.GradientTape() as tape:
        tape.watch(parameters)
        mixing = problem.mixing(parameters)
    return tape.gradient(list(mixing), parameters, output_gradients=list(cotangent))


def _norm(tensor):
    return tf.zeros([], tf.float64) if tensor is None else tf.norm(tf.cast(tensor, tf.float64))


def exact_stagewise(problem, parameters):
    """The exact hypergradient dL/dA with its per-stage parts and the chain's cotangent norms."""
    mixing = [tf.stop_gradient(m) for m in problem.mixing(parameters)]
    inputs, outputs, gate = _forward(problem, mixing)
    cot_encoder, cot_head, cot_mixing, losses, accs, gate = _validation_cotangents(
        problem, mixing, outputs, gate
    )
    num_stages = len(problem.starts)
    stage_parts, cotangent_norms = [None] * num_stages, [None] * num_stages
    link_gains = [tf.zeros([], tf.float64)] * num_stages
    for stage in reversed(range(num_stages)):
        cotangent_norms[stage] = tf.sqrt(tf.square(_norm(cot_encoder[stage])) + tf.square(
            _norm(cot_head[stage])))  # fmt: skip
        if cot_encoder[stage] is None and cot_head[stage] is None:
            continue  # W̄_s does not reach the objective (lambda = 0, not a last stage)
        part, into_previous, gate = _backward_stage(
            problem, stage, inputs[stage], mixing, cot_encoder[stage], cot_head[stage], gate
        )
        stage_parts[stage] = _pull_back(problem, parameters, part)
        if into_previous is not None:
            link_gains[stage] = tf.math.divide_no_nan(
                _norm(into_previous), _norm(cot_encoder[stage])
            )
            cot_encoder[stage - 1] = _add(cot_encoder[stage - 1], into_previous)
    grads = _pull_back(problem, parameters, cot_mixing)  # the direct validation part
    for parts in stage_parts:
        if parts is not None:
            grads = [g + p for g, p in zip(grads, parts)]
    return Result(grads, losses, accs, stage_parts, cotangent_norms, link_gains)
