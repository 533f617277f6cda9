"""Per-learner stage computations of the hypergradient, and their compiled sharing.

A stage of interleaving learning needs three computations of one learner's loss at given flat
weights (W, H), mixing weights and a batch, each this replica's share and unweighted:

* ``gradient``: ∇_{W,H} L, the loss and the logits (the virtual and the real SGD step);
* ``validation``: L, the logits and ∇_{W,H,mixing} L (the validation objective's cotangents);
* ``mixed``: ∂/∂(mixing[, W, H]) <∇_{W,H} L, d> for a direction d (one virtual step's
  mixed second derivative in the stage-wise exact hypergradient).

Loss scaling (``precision``): with a learner's ``loss_scale`` S (float16) each computation
differentiates S * L and divides its float32 results by S (all three are linear in the loss);
``mixed`` also rescales the direction d by a power of two c (to 2^-8 of the weights' norm) and
divides by c, so its forward-mode tangents stay in float16's range too. Without a scale the
graphs are those of plain float32 / float64.

``StageFunctions`` serves them. On one replica it traces each computation once per learner
*structure* (learners of identical encoder, head and image shape share one trace) as a
non-inlined ``tf.function``, so an iteration's graph holds one call per stage instead of a
copy of the supernet per stage and does not grow with K * M. Under a strategy with several
replicas they are inlined: collective ops (synchronised batch norm) inside one shared function
body would be traced once for all replicas.

On several replicas ``forward_over_reverse`` is computed as ``reverse_over_reverse``: inside a
``tf.function``, TensorFlow's forward-mode accumulator (TF 2.21) propagates a *zero* tangent
through a replica context's ``all_reduce`` (the synchronised batch-norm statistics), so the
JVP would silently drop every cross-replica term (``tests/test_distributed.py`` pins both the
TensorFlow behaviour and the fallback).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from ilnas_tf import distribution, precision

HVP_METHODS = ("forward_over_reverse", "reverse_over_reverse")
_ZERO = tf.UnconnectedGradients.ZERO


def _dense(tensors):
    return [tf.convert_to_tensor(t) for t in tensors]


def loss_gradient(learner, encoder, head, normal, reduce, images, labels, noise=None):
    """∇_{W,H} L^tr (this replica's share, unweighted), the loss and the logits."""
    scale = learner.loss_scale
    with tf.GradientTape() as tape:
        tape.watch([encoder, head])
        loss, logits = learner.loss(encoder, head, (normal, reduce), images, labels, noise)
        scaled = precision.scale_loss(loss, scale)
    grads = tape.gradient(scaled, [encoder, head], unconnected_gradients=_ZERO)
    g_encoder, g_head = precision.unscale(_dense(grads), scale)
    return g_encoder, g_head, loss, logits


def validation_gradient(learner, encoder, head, normal, reduce, images, labels, noise=None):
    """L^val, the logits and ∇_{W,H,mixing} L^val (this replica's share, unweighted)."""
    sources = [encoder, head, normal, reduce]
    scale = learner.loss_scale
    with tf.GradientTape() as tape:
        tape.watch(sources)
        loss, logits = learner.loss(encoder, head, (normal, reduce), images, labels, noise)
        scaled = precision.scale_loss(loss, scale)
    grads = _dense(tape.gradient(scaled, sources, unconnected_gradients=_ZERO))
    return (loss, logits) + precision.unscale(grads, scale)


def mixed_second_derivative(
    learner,
    hvp_method,
    with_weights,
    encoder,
    head,
    normal,
    reduce,
    images,
    labels,
    d_enc,
    d_head,
    noise=None,
):
    """∂/∂(mixing[, W, H]) <∇_{W,H} L^tr, (d_enc, d_head)>: one virtual step's VJP.

    The (W, H) parts (a Hessian-vector product) only when ``with_weights``.
    ``hvp_method='forward_over_reverse'`` uses the symmetry of the Hessian of L in
    (mixing, W, H): the VJP of ∇_{W,H} L with cotangent d is the JVP of ∇_{mixing,W,H} L in
    direction (0, d). ``'reverse_over_reverse'`` differentiates <∇_{W,H} L, d> by a second tape.
    With a loss scale S the loss is S * L and d is c * d (``precision.direction_scale``); the
    parts, bilinear in (L, d), are divided by S * c outside the tapes.
    """
    sources = [normal, reduce] + ([encoder, head] if with_weights else [])
    scale = divisor = learner.loss_scale
    if scale is not None:
        direction = precision.direction_scale([encoder, head], [d_enc, d_head])
        d_enc, d_head = d_enc * direction, d_head * direction
        divisor = scale * direction
    if hvp_method == "forward_over_reverse":
        with tf.autodiff.ForwardAccumulator([encoder, head], [d_enc, d_head]) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch(sources)
                loss, _ = learner.loss(encoder, head, (normal, reduce), images, labels, noise)
                loss = precision.scale_loss(loss, scale)
            grads = _dense(tape.gradient(loss, sources, unconnected_gradients=_ZERO))
        parts = [accumulator.jvp(g, unconnected_gradients=_ZERO) for g in grads]
    else:
        with tf.GradientTape() as outer:
            outer.watch(sources)
            with tf.GradientTape() as inner:
                inner.watch([encoder, head])
                loss, _ = learner.loss(encoder, head, (normal, reduce), images, labels, noise)
                loss = precision.scale_loss(loss, scale)
            g_enc, g_head = _dense(
                inner.gradient(loss, [encoder, head], unconnected_gradients=_ZERO)
            )
            dot = tf.reduce_sum(g_enc * d_enc) + tf.reduce_sum(g_head * d_head)
        parts = outer.gradient(dot, sources, unconnected_gradients=_ZERO)
    return precision.unscale(_dense(parts), divisor)


def _structure_key(learner):
    """Learners with equal keys compute the same functions of their arguments."""

    def config(layer):
        values = dict(layer.get_config())
        values.pop("name", None)
        return repr(sorted(values.items()))

    return (
        type(learner),
        type(learner.encoder),
        config(learner.encoder),
        type(learner.head),
        config(learner.head),
        learner.image_shape,
        learner.num_encoder_weights,
        learner.num_head_weights,
        learner.loss_scale,
    )


class StageFunctions:
    """The three stage computations of each learner, traced once per learner structure.

    Args:
      learners: the engine's learners.
      hvp_method: one of ``HVP_METHODS`` (see ``mixed_second_derivative``).
      shared: trace each computation once as a non-inlined ``tf.function`` (one replica
        only); otherwise inline it at every call.
    """

    def __init__(self, learners, hvp_method="forward_over_reverse", shared=True):
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method={hvp_method!r} is invalid: expected one of {HVP_METHODS}")
        self.learners = list(learners)
        self.hvp_method = hvp_method
        self.shared = bool(shared)
        keys = [_structure_key(item) for item in self.learners]
        self._representative = [keys.index(key) for key in keys]
        self._traced = {}

    def _get(self, impl, k, *variant):
        if not self.shared or distribution.num_replicas() > 1:
            return functools.partial(impl, self.learners[k], *variant)
        key = (impl.__name__, self._representative[k]) + variant
        if key not in self._traced:
            learner = self.learners[self._representative[k]]
            self._traced[key] = tf.function(
                functools.partial(impl, learner, *variant),
                autograph=False,
                experimental_attributes={"_noinline": True},
            )
        return self._traced[key]

    # Every computation takes the batch's noise ids (``data.with_noise_ids``) as an optional
    # last argument: batches ``(images, labels, noise)`` pass them, ``(images, labels)`` don't.

    def gradient(self, k):
        """``f(encoder, head, normal, reduce, images, labels) -> (g_enc, g_head, loss, logits)``."""
        return self._get(loss_gradient, k)

    def validation(self, k):
        """``f(encoder, head, normal, reduce, images, labels) -> (loss, logits, d_enc, d_head,
        d_normal, d_reduce)``."""
        return self._get(validation_gradient, k)

    def effective_hvp_method(self):
        """The HVP method used in the current strategy (module docstring: several replicas)."""
        if distribution.num_replicas() > 1:
            return "reverse_over_reverse"
        return self.hvp_method

    def mixed(self, k, with_weights):
        """``f(encoder, head, normal, reduce, images, labels, d_enc, d_head) -> parts``."""
        return self._get(
            mixed_second_derivative, k, self.effective_hvp_method(), bool(with_weights)
        )
