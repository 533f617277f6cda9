"""PyTorch's SGD, gradient clipping and Adam: pure update functions and Keras 3 optimizers.

DARTS (Liu et al., 2019) and the interleaving-learning paper train the network weights with
``torch.optim.SGD(params, lr, momentum, weight_decay)`` after
``nn.utils.clip_grad_norm_(params, grad_clip)`` and the architecture with
``torch.optim.Adam(alphas, lr, betas, weight_decay)``. Keras' optimizers differ from both:

* weight decay is *coupled* in PyTorch: ``d = g + weight_decay * w`` enters the momentum buffer
  or Adam's moments (Keras' ``weight_decay`` subtracts ``lr * weight_decay * w`` outside them);
* PyTorch's SGD buffer holds gradients, not steps: ``buf = momentum * buf + d; w -= lr * buf``
  (Keras keeps ``m = momentum * m - lr * g``), so a learning-rate change takes effect on the
  whole buffer at once. The two forms agree only while the learning rate is constant;
* PyTorch's Adam adds epsilon to the bias-*corrected* ``sqrt(v)``; Keras adds it to the
  uncorrected one (at step 1 with ``beta_2 = 0.999`` that acts like an epsilon ~32 times
  larger), and Keras computes the beta powers from float32 hyperparameters;
* ``clip_grad_norm_`` scales by ``max_norm / (norm + 1e-6)`` when that is below 1;
  ``tf.clip_by_global_norm`` and Keras' ``global_clipnorm`` scale by
  ``max_norm / max(norm, max_norm)``, a relative difference of about ``1e-6 / norm`` on clipped
  steps (and at ``norm == max_norm`` PyTorch scales by ``1 - 1e-6 / max_norm``, TensorFlow not
  at all).

The pure functions ``sgd_step``, ``clip_by_global_norm`` and ``adam_step`` take tensors and
return tensors (no variables, differentiable, usable under nested gradient tapes and in
``tf.function``); the engine's virtual and real weight steps use the first two. ``TorchSGD`` and
``TorchAdam`` are Keras optimizers built on them. All hyperparameters are converted straight to
the variable's dtype (a Python float is never rounded through float32), and a constant learning
rate is stored in a float64 variable whatever ``keras.config.floatx()`` is, so a float64 run
keeps ``0.025`` as ``0.025`` (float32 variables get the correctly rounded value, as before).

Like every Keras optimizer both wrap in ``keras.optimizers.LossScaleOptimizer`` (mixed float16):
gradients are unscaled before the clipping.

Distribution: ``apply`` / ``apply_gradients`` called per replica (in ``strategy.run``) sum the
replicas' gradients, then run ``update_step`` once per variable on the summed gradient, so the
coupled decay is added once (not once per replica). Keras clips *before* that sum, though,
which would clip each replica's partial gradient: with ``global_clipnorm`` pass *globally
reduced* gradients to ``apply`` in cross-replica context instead (``train_loop`` does).
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from ilnas_tf import validation

CLIP_EPSILON = 1e-6
"""The term ``torch.nn.utils.clip_grad_norm_`` adds to the norm before dividing."""


def _hyperparameter(value, dtype):
    """``value`` as a scalar tensor of ``dtype``: a Python/NumPy number is read directly in
    ``dtype`` (no float32 round trip); a tensor or variable is cast."""
    if isinstance(value, numbers.Real):
        return tf.constant(float(value), dtype)
    return tf.cast(value, dtype)


def _is_zero(value):
    return isinstance(value, numbers.Real) and value == 0


def sgd_step(weights, buffer, gradient, learning_rate, momentum, weight_decay):
    """One ``torch.optim.SGD`` step (momentum, coupled weight decay, no dampening/Nesterov).

    ``buffer' = momentum * buffer + (gradient + weight_decay * weights)`` and
    ``weights' = weights - learning_rate * buffer'``, in PyTorch's order of operations.
    PyTorch sets the buffer to ``d`` at the first step, which is what a zero buffer gives.

    Args:
        weights: the current weights (a tensor of any float dtype).
        buffer: the momentum buffer, shaped and typed like ``weights`` (zeros at the start).
        gradient: the (clipped) loss gradient, shaped and typed like ``weights``.
        learning_rate: a Python number or a scalar tensor (cast to the weights' dtype).
        momentum: idem; with a Python ``0`` the buffer term is left out.
        weight_decay: idem (coupled L2 factor); with a Python ``0`` the term is left out.

    Returns:
        ``(new_weights, new_buffer)``, differentiable w.r.t. weights, buffer and gradient.
    """
    weights = tf.convert_to_tensor(weights)
    dtype = weights.dtype
    direction = tf.convert_to_tensor(gradient, dtype)
    if not _is_zero(weight_decay):
        direction = direction + _hyperparameter(weight_decay, dtype) * weights
    new_buffer = direction
    if not _is_zero(momentum):
        new_buffer = _hyperparameter(momentum, dtype) * buffer + direction
    return weights - _hyperparameter(learning_rate, dtype) * new_buffer, new_buffer


def clip_by_global_norm(tensors, max_norm):
    """``torch.nn.utils.clip_grad_norm_`` as a pure function.

    ``norm = sqrt(sum_t ||t||^2)``; ``coefficient = max_norm / (norm + 1e-6)``; the tensors
    are multiplied by ``min(coefficient, 1)``. ``tf.clip_by_global_norm`` multiplies by
    ``max_norm / max(norm, max_norm)`` instead (no ``1e-6``): the two differ by a factor
    ``1 + 1e-6 / norm`` on clipped steps, and PyTorch also scales (by ``1 - 1e-6 / max_norm``)
    when the norm equals ``max_norm`` exactly. The norm is one square root of the summed
    squares (PyTorch takes the norm of the per-tensor norms: equal up to round-off, and the
    gradient stays finite when one tensor is zero). Non-finite norms propagate as in PyTorch.

    Args:
        tensors: a list of tensors (``None`` entries are passed through), all of one float
            dtype or castable to the first one's.
        max_norm: a Python number or a scalar tensor.

    Returns:
        ``(clipped, norm)``: the list of scaled tensors and the global norm before clipping
        (in the first tensor's dtype). Differentiable.
    """
    tensors = [None if t is None else tf.convert_to_tensor(t) for t in tensors]
    present = [t for t in tensors if t is not None]
    if not present:
        raise ValueError("clip_by_global_norm needs at least one tensor that is not None")
    dtype = present[0].dtype
    squares = [tf.cast(tf.reduce_sum(tf.square(t)), dtype) for t in present]
    norm = tf.sqrt(tf.add_n(squares))
    coefficient = _hyperparameter(max_norm, dtype) / (norm + tf.constant(CLIP_EPSILON, dtype))
    coefficient = tf.minimum(coefficient, tf.constant(1.0, dtype))
    clipped = [None if t is None else t * tf.cast(coefficient, t.dtype) for t in tensors]
    return clipped, norm


def _lerp(start, end, weight):
    """``torch.lerp``'s formula (the branch keeps the result exact at weight 0 and 1)."""
    small = start + weight * (end - start)
    large = end - (end - start) * (1 - weight)
    return tf.where(weight < 0.5, small, large)


def adam_step(param, m, v, gradient, step, learning_rate, beta_1, beta_2, epsilon, weight_decay):
    """One ``torch.optim.Adam`` step (coupled L2 decay, no AMSGrad), as PyTorch computes it.

    With ``g = gradient + weight_decay * param``::

        m' = lerp(m, g, 1 - beta_1)                  # = beta_1 m + (1 - beta_1) g
        v' = beta_2 v + (1 - beta_2) g g
        denom = sqrt(v') / sqrt(1 - beta_2**step) + epsilon
        param' = param - learning_rate / (1 - beta_1**step) * m' / denom

    Every hyperparameter and the bias corrections are computed in ``param``'s dtype.

    Args:
        param: the current value (a tensor of any float dtype).
        m: the first-moment estimate, like ``param`` (zeros at the start).
        v: the second-moment estimate, like ``param`` (zeros at the start).
        gradient: the loss gradient, like ``param``.
        step: the step number counted from 1 (a Python number or a tensor of any dtype).
        learning_rate, beta_1, beta_2, epsilon: Python numbers or scalar tensors.
        weight_decay: coupled L2 factor; with a Python ``0`` the term is left out.

    Returns:
        ``(new_param, new_m, new_v)``.
    """
    param = tf.convert_to_tensor(param)
    dtype = param.dtype
    one = tf.constant(1.0, dtype)
    grad = tf.convert_to_tensor(gradient, dtype)
    if not _is_zero(weight_decay):
        grad = grad + _hyperparameter(weight_decay, dtype) * param
    beta_1 = _hyperparameter(beta_1, dtype)
    beta_2 = _hyperparameter(beta_2, dtype)
    step = _hyperparameter(step, dtype)
    new_m = _lerp(tf.convert_to_tensor(m, dtype), grad, one - beta_1)
    new_v = tf.convert_to_tensor(v, dtype) * beta_2 + (one - beta_2) * grad * grad
    bias_correction1 = one - tf.pow(beta_1, step)
    bias_correction2 = one - tf.pow(beta_2, step)
    step_size = _hyperparameter(learning_rate, dtype) / bias_correction1
    denom = tf.sqrt(new_v) / tf.sqrt(bias_correction2) + _hyperparameter(epsilon, dtype)
    return param - step_size * (new_m / denom), new_m, new_v


def _unset_learning_rate():  # replaced by a float64 variable right after Optimizer.__init__
    raise RuntimeError("the learning rate variable has not been created yet")


class _TorchOptimizerMixin:
    """What ``TorchSGD`` and ``TorchAdam`` share: a float64 learning rate and torch clipping."""

    def _init_learning_rate(self, learning_rate):
        """Checks ``learning_rate``; returns what to pass to ``Optimizer.__init__``."""
        if isinstance(learning_rate, numbers.Real):
            rate = validation.check_number("learning_rate", learning_rate, 0)
            return rate, _unset_learning_rate
        return None, learning_rate

    def _store_learning_rate(self, rate):
        """Stores a constant learning rate in a float64 variable (after ``__init__``)."""
        if rate is None:
            return
        with keras.name_scope(self.name, caller=self):
            self._learning_rate = keras.Variable(
                rate,
                name="learning_rate",
                dtype="float64",
                trainable=False,
                aggregation="only_first_replica",
            )

    def _clip_gradients(self, grads):
        """Keras' clipping, with ``global_clipnorm`` following ``clip_by_global_norm``."""
        if self.global_clipnorm and self.global_clipnorm > 0:
            return clip_by_global_norm(grads, self.global_clipnorm)[0]
        return super()._clip_gradients(grads)


def _reject_keras_weight_decay(owner, kwargs):
    if kwargs.get("weight_decay") is not None:
        validation.fail(
            "weight_decay",
            kwargs["weight_decay"],
            f"None: {owner} takes coupled_weight_decay (PyTorch's weight_decay), "
            "not Keras' decoupled weight_decay",
        )


def _check_fraction(name, value):
    """A number in [0, 1)."""
    value = validation.check_number(name, value, 0)
    if value >= 1:
        validation.fail(name, value, "a finite number >= 0 and < 1")
    return value


@keras.saving.register_keras_serializable(package="ilnas_tf")
class TorchSGD(_TorchOptimizerMixin, keras.optimizers.SGD):
    """SGD with PyTorch's momentum buffer and coupled (L2) weight decay.

    Update per variable ``w`` with (clipped) gradient ``g`` and learning rate ``lr``
    (``sgd_step``)::

        d = g + coupled_weight_decay * w
        buf = momentum * buf + d        # buf starts at 0, so the first buf equals d
        w = w - lr * buf                # momentum 0: w = w - lr * d

    ``global_clipnorm`` clips the loss gradients *before* the weight decay term is added, as
    ``clip_grad_norm_`` does before ``step()``, with PyTorch's formula
    (``clip_by_global_norm``).

    Args:
        learning_rate: A float (stored in float64), a schedule or a callable.
        momentum: Momentum factor in [0, 1).
        coupled_weight_decay: L2 factor added to the gradient (PyTorch's ``weight_decay``).
        name: The optimizer's name.
        **kwargs: Other ``keras.optimizers.Optimizer`` arguments (``global_clipnorm``, ...).
            Keras' decoupled ``weight_decay`` and ``nesterov`` are rejected: use
            ``coupled_weight_decay``.

    Raises:
        ValueError: On a momentum outside [0, 1), a negative decay or learning rate, or a
            Keras ``weight_decay`` or ``nesterov`` argument.
    """

    def __init__(
        self,
        learning_rate=0.025,
        momentum=0.9,
        coupled_weight_decay=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        _reject_keras_weight_decay("TorchSGD", kwargs)
        if kwargs.pop("nesterov", False):
            validation.fail("nesterov", True, "False: TorchSGD implements plain momentum")
        momentum = _check_fraction("momentum", momentum)
        rate, initial = self._init_learning_rate(learning_rate)
        super().__init__(learning_rate=initial, momentum=momentum, name=name, **kwargs)
        self._store_learning_rate(rate)
        self.coupled_weight_decay = validation.check_number(
            "coupled_weight_decay", coupled_weight_decay, 0
        )

    def update_step(self, gradient, variable, learning_rate):
        """One ``sgd_step`` of ``variable`` (see the class docstring)."""
        dtype = variable.dtype
        gradient = tf.cast(gradient, dtype)
        if self.momentum != 0:
            buffer = self.momentums[self._get_variable_index(variable)]
        else:
            buffer = None
        new_value, new_buffer = sgd_step(
            tf.convert_to_tensor(variable),
            None if buffer is None else tf.convert_to_tensor(buffer),
            gradient,
            learning_rate,
            self.momentum if buffer is not None else 0,
            self.coupled_weight_decay,
        )
        if buffer is not None:
            self.assign(buffer, new_buffer)
        self.assign(variable, new_value)

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov", None)
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config


@keras.saving.register_keras_serializable(package="ilnas_tf")
class TorchAdam(_TorchOptimizerMixin, keras.optimizers.Optimizer):
    """``torch.optim.Adam`` (coupled L2 weight decay, no AMSGrad) as a Keras 3 optimizer.

    The DARTS architecture optimizer: per variable, ``adam_step`` with the step number
    ``iterations + 1`` and every hyperparameter in the variable's dtype (Keras' ``Adam`` adds
    epsilon before the bias correction and keeps the learning rate and beta powers in float32;
    see the module docstring). The defaults are DARTS' architecture-optimizer settings.

    Args:
        learning_rate: A float (stored in float64), a schedule or a callable.
        beta_1: First-moment decay in [0, 1).
        beta_2: Second-moment decay in [0, 1).
        epsilon: Added to the bias-corrected ``sqrt(v)`` (>= 0).
        coupled_weight_decay: L2 factor added to the gradient (PyTorch's ``weight_decay``).
        name: The optimizer's name.
        **kwargs: Other ``keras.optimizers.Optimizer`` arguments (``global_clipnorm`` follows
            ``clip_by_global_norm``). Keras' decoupled ``weight_decay`` is rejected.

    Raises:
        ValueError: On a beta outside [0, 1), a negative epsilon, decay or learning rate, or a
            Keras ``weight_decay`` argument.
    """

    def __init__(
        self,
        learning_rate=3e-4,
        beta_1=0.5,
        beta_2=0.999,
        epsilon=1e-8,
        coupled_weight_decay=1e-3,
        name="torch_adam",
        **kwargs,
    ):
        _reject_keras_weight_decay("TorchAdam", kwargs)
        beta_1 = _check_fraction("beta_1", beta_1)
        beta_2 = _check_fraction("beta_2", beta_2)
        epsilon = validation.check_number("epsilon", epsilon, 0)
        coupled_weight_decay = validation.check_number(
            "coupled_weight_decay", coupled_weight_decay, 0
        )
        rate, initial = self._init_learning_rate(learning_rate)
        super().__init__(learning_rate=initial, name=name, **kwargs)
        self._store_learning_rate(rate)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.coupled_weight_decay = coupled_weight_decay

    def build(self, var_list):
        """Creates the first- and second-moment slots (zeros) of every variable."""
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        """One ``adam_step`` of ``variable`` at step ``iterations + 1``."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        new_value, new_m, new_v = adam_step(
            tf.convert_to_tensor(variable),
            tf.convert_to_tensor(m),
            tf.convert_to_tensor(v),
            tf.cast(gradient, dtype),
            tf.cast(self.iterations + 1, dtype),
            learning_rate,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.coupled_weight_decay,
        )
        self.assign(m, new_m)
        self.assign(v, new_v)
        self.assign(variable, new_value)

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            coupled_weight_decay=self.coupled_weight_decay,
        )
        return config
