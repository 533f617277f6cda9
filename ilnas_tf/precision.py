"""Mixed precision of the search: compute dtypes, loss scaling and the direction scale.

Under ``run_search.mixed_precision='mixed_bfloat16'`` or ``'mixed_float16'`` the encoder and
head layers carry that Keras dtype policy: they compute in bfloat16 / float16 while their
variables stay float32 (Micikevicius et al., 2018, "Mixed Precision Training"). Everything the
search keeps stays float32: the learners' flat weights and momentum buffers, the alphas, the
virtual steps, every cotangent and the hypergradient's accumulation, the optimizers. The flat
weights are cast to the compute dtype inside the forward pass (``learner.Learner.logits``), so
their gradients come back float32; the logits are cast to float32 before the cross-entropy.

float16 has 5 exponent bits: backward values below 2^-24 flush to zero. Loss scaling
(Micikevicius et al., 2018) multiplies the loss by S before differentiating and divides the
float32 results by S (``stage_functions``: the loss gradient, the validation gradient and the
mixed second derivative, which is linear in the loss). The scale is *fixed*
(``run_search.loss_scale``, default ``DEFAULT_LOSS_SCALE``), a power of two, so that scaling
and unscaling change no bit wherever nothing under- or overflows. Dynamic scaling (Keras'
``LossScaleOptimizer``) skips the steps whose gradients overflow and halves S; here one search
iteration chains K * M stages of first- and second-order derivatives and both the architecture
and the weight steps would have to be skipped together, so an overflow is not retried: it makes
the hypergradient or the next loss non-finite, and the run loop stops the run naming the last
good checkpoint (the search's advice then names ``run_search.loss_scale``). bfloat16 has
float32's exponent range and needs no scaling.

The mixed second derivative also differentiates *forward* in a direction d (the chain's
cotangent): its tangents scale with |d| and the results with S |d|. d is therefore rescaled by
a power of two c to ``DIRECTION_SIZE`` = 2^-8 of the weights' norm first (``direction_scale``)
and the result divided by c: the forward tangents are then ~2^-8 of the activations, inside
float16's normal range (down to 2^-14) however small the chain's cotangent has become, and the
second-order results stay far enough below the first-order ones (times the Hessian's gain)
that the loss scale's headroom holds them.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from ilnas_tf import validation

PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
DEFAULT_LOSS_SCALE = 2.0**10
"""The fixed float16 loss scale: cotangents gain 10 binades above float16's underflow while
gradients of up to 64 per element still fit below its overflow (65504 / 1024)."""
DIRECTION_SIZE = 2.0**-8
"""||c d|| / ||w|| of the rescaled direction of the float16 mixed second derivative."""
LOSS_SCALE_EXPECTED = "None or a power of two > 0 (e.g. 1024.0)"


def check_precision(name, value):
    """``None``, ``'mixed_float16'`` or ``'mixed_bfloat16'`` (ValueError naming ``name``)."""
    return validation.check_choice(name, value, PRECISIONS)


def check_loss_scale(name, value):
    """``None`` (no scaling) or a power of two > 0, as a float (ValueError naming ``name``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        validation.fail(name, value, LOSS_SCALE_EXPECTED)
    number = float(value)
    if not (math.isfinite(number) and number > 0 and math.frexp(number)[0] == 0.5):
        validation.fail(name, value, LOSS_SCALE_EXPECTED)
    return number


def shared_loss_scale(learners):
    """The learners' common ``loss_scale`` (None: no scaling); ValueError if they differ."""
    scales = {item.loss_scale for item in learners}
    if len(scales) > 1:
        raise ValueError(
            "learners' loss_scale values "
            + ", ".join(f"{item.name}: {item.loss_scale!r}" for item in learners)
            + " differ: expected one loss scale for all learners"
        )
    return scales.pop() if scales else None


def scale_loss(loss, scale):
    """``loss * scale`` (``loss`` itself when ``scale`` is None)."""
    return loss if scale is None else loss * tf.constant(scale, loss.dtype)


def unscale(tensors, scale):
    """Each tensor divided by ``scale`` (a float or a tensor; unchanged when None)."""
    if scale is None:
        return tuple(tensors)
    return tuple(None if t is None else t / tf.cast(scale, t.dtype) for t in tensors)


def direction_scale(weights, direction):
    """A power of two c with ||c d|| ~ DIRECTION_SIZE ||w|| over the concatenated tensors (1 if
    d or w is 0).

    A power of two, so ``c * d`` and the final division by c are exact in float32.
    """

    def norm(tensors):
        return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))

    w_norm, d_norm = norm(weights), norm(direction)
    ratio = tf.math.divide_no_nan(DIRECTION_SIZE * w_norm, d_norm)
    exponent = tf.round(tf.math.log(ratio) / math.log(2.0))
    # 1 where either norm is 0 (or d's squares underflow); never beyond float32's range.
    exponent = tf.where(
        ratio > 0, tf.clip_by_value(exponent, -100.0, 100.0), tf.zeros_like(exponent)
    )
    return tf.pow(tf.constant(2.0, ratio.dtype), exponent)
