"""Activation recomputation: a pure function whose derivatives recompute its forward pass.

Gradient checkpointing (Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost"):
``recomputed(fn, args)`` returns ``fn(*args)`` but lets no gradient tape or forward
accumulator store ``fn``'s internal activations; only the inputs ``args`` and the outputs are
kept. ``SearchEncoder(recompute="cells")`` wraps every search cell this way.

The op is recorded on every active tape and accumulator (``record.record_operation``) with

* a backward function: the VJP ``(args, cotangents) -> gradients``, computed by running
  ``fn`` again under a local ``GradientTape``. When a tape or accumulator is active (second
  order: nested tapes, forward-over-reverse) the VJP is itself a ``recomputed`` op, so an
  outer tape stores only the cell's inputs and cotangents (not the recomputation's
  activations) and differentiates the VJP by recomputing it in turn;
* a forward function (JVP, for ``tf.autodiff.ForwardAccumulator``): ``fn`` run again under a
  local accumulator. TensorFlow's default JVP for an op recorded with a backward function
  only (a double VJP) cannot be used: while an accumulator computes a JVP, tapes created
  inside it (the backward function's local tape) record nothing, so the JVP would silently
  be missing. ``forwardprop_util.push_forwardprop_state`` lifts this for the local
  accumulator, as TensorFlow's own ``forwardprop._jvp_helper`` does.

``fn`` runs on identities of its inputs that no tape or accumulator knows, so outer tapes do
not record its ops while local ones can. Inside a ``tf.function`` every recomputation for a
VJP takes a data dependency on the cotangent, so that grappler cannot hoist it into the
forward pass or merge it with the original forward ops (which would silently store the
activations again), as ``tf.recompute_grad`` does. (``tf.recompute_grad`` itself supports
neither second-order derivatives nor forward mode: its backward function's transpose
raises.) Under a ``tf.distribute`` strategy the recomputation runs in the replica context of
the gradient computation, so collective ops in ``fn`` (synchronised batch norm, ``ops``) run
again, in the same order on every replica.

Pitfall (Keras ``stateless_call``): the layer variables are substituted by tensors only while
the forward pass runs (a ``StatelessScope``); the backward pass runs later, at
``tape.gradient``. ``fn`` must therefore be a pure function of its arguments: every weight it
uses must be one of ``args`` (the search cells' ``forward(kernels, s0, s1, weights)`` with
the kernels read inside the scope). ``recomputed`` raises if ``fn`` reads a variable; a
tensor captured from outside would silently receive no gradient.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import forwardprop_util, record

__all__ = ["recomputed"]

_ZERO = tf.UnconnectedGradients.ZERO


def _trainable(tensor) -> bool:
    return tensor.dtype.is_floating or tensor.dtype.is_complex


def _unrecorded_copies(tensors):
    """Identities that no tape or accumulator knows (fresh sources for local derivatives)."""
    with record.stop_recording():
        return [tf.identity(t) for t in tensors]


def _cotangent_dependency(cotangents):
    """An exact zero (float32) that depends on the data of every cotangent.

    ``where(b == b, 0, nan)`` for a boolean ``b`` read from one element of each: grappler
    cannot fold it, so everything that adds it waits for the last cotangent (as in
    ``tf.recompute_grad``). Waiting for all of them keeps the recomputations of successive
    cells in order (one cell's activations alive at a time) where some cotangents are known
    early (a second-order pass gets the cotangents of the weight gradients up front).
    """
    elements = [tf.cast(tf.reshape(c, [-1])[:1], tf.float32) for c in cotangents]
    element = tf.cast(tf.reduce_max(tf.concat(elements, 0)), tf.bool)
    return tf.where(tf.equal(element, element), 0.0, float("nan"))


def _as_list(result):
    return (list(result), False) if isinstance(result, (list, tuple)) else ([result], True)


def _vjp_function(fn, trainable):
    """``vjp(*inputs, *cotangents) -> gradients`` (one per trainable input) of ``fn``."""
    count = len(trainable)

    def vjp(*values):
        inputs, cotangents = values[:count], list(values[count:])
        zero = _cotangent_dependency(cotangents)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            again = []
            for value, is_trainable in zip(inputs, trainable):
                if is_trainable:
                    value = value + tf.cast(zero, value.dtype)  # exact: adds 0
                    tape.watch(value)
                again.append(value)
            outputs, _ = _as_list(fn(*again))
        sources = [v for v, t in zip(again, trainable) if t]
        grads = tape.gradient(
            outputs, sources, output_gradients=cotangents, unconnected_gradients=_ZERO
        )
        return [tf.convert_to_tensor(g) for g in grads]  # dense (no IndexedSlices)

    return vjp


def recomputed(fn, args, name="recomputed"):
    """``fn(*args)`` with its activations recomputed whenever it is differentiated.

    Args:
      fn: a pure function of its arguments (module docstring) returning a floating-point
        tensor or a list of them.
      args: its inputs (tensors or variables, converted to tensors); every floating-point one
        receives its gradient.
      name: the name of the recorded op.

    Returns:
      ``fn(*args)``, differentiable to any order in reverse mode and, to first order in
      forward mode (also forward-over-reverse), with respect to every floating-point input.

    Raises:
      ValueError: if ``fn`` reads a variable (its gradient would silently be lost).
    """
    inputs = [tf.convert_to_tensor(a) for a in args]
    trainable = [_trainable(t) for t in inputs]
    with record.VariableWatcher() as watcher:
        outputs, single = _as_list(fn(*_unrecorded_copies(inputs)))
    if watcher.watched_variables():
        names = sorted({v.name for v in watcher.watched_variables()})
        raise ValueError(
            f"recompute: the recomputed function {name!r} reads variables {names}; pass "
            "every weight it uses as an argument instead (inside a Keras StatelessScope, "
            "the substituted values are gone when the backward pass recomputes it)"
        )
    with record.stop_recording():
        outputs = [tf.identity(o) for o in outputs]
    vjp = _vjp_function(fn, trainable)

    def backward(*cotangents):
        values = inputs + list(cotangents)
        if record.could_possibly_record():  # differentiated again: recompute the VJP too
            grads = recomputed(vjp, values, name=f"{name}_vjp")
        else:
            grads = vjp(*values)
        grads = iter(grads)
        return [next(grads) if t else None for t in trainable]

    def forward(*tangents):
        with forwardprop_util.push_forwardprop_state():
            copies = _unrecorded_copies(inputs)
            primals = [c for c, t in zip(copies, trainable) if t]
            directions = [
                tf.zeros_like(c) if d is None else tf.convert_to_tensor(d)
                for c, d, t in zip(copies, tangents, trainable)
                if t
            ]
            with tf.autodiff.ForwardAccumulator(primals, directions) as accumulator:
                again, _ = _as_list(fn(*copies))
            return [accumulator.jvp(o, unconnected_gradients=_ZERO) for o in again]

    record.record_operation(name, outputs, inputs, backward, forward)
    return outputs[0] if single else outputs
