"""The DARTS reference's optimizer as a Keras 3 optimizer: PyTorch SGD semantics.

``torch.optim.SGD(params, lr, momentum, weight_decay)`` after
``nn.utils.clip_grad_norm_(params, grad_clip)``, the training recipe of every DARTS-family
evaluation script, differs from ``keras.optimizers.SGD`` in two ways:

* weight decay is *coupled*: ``d = g + weight_decay * w`` enters the momentum buffer (Keras'
  ``weight_decay`` subtracts ``lr * weight_decay * w`` outside the buffer);
* the buffer holds gradients, not steps: ``buf = momentum * buf + d; w -= lr * buf`` (Keras keeps
  ``m = momentum * m - lr * g``), so a learning-rate change takes effect on the whole buffer at
  once. The two forms agree only while the learning rate is constant.

``TorchSGD`` implements the PyTorch form. Its ``global_clipnorm`` clips the loss gradients
*before* the weight decay term is added, as ``clip_grad_norm_`` does before ``step()``. Like
every Keras optimizer it also wraps in ``keras.optimizers.LossScaleOptimizer`` (mixed float16):
gradients are unscaled before the clipping.

Under a ``tf.distribute`` strategy pass *globally reduced* gradients to ``apply`` in
cross-replica context (``train_loop`` does): Keras clips before its own all-reduce when
``apply`` is called per replica, which would clip each replica's partial gradient.
"""

from __future__ import annotations

import numbers

import keras


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="ilnas_tf")
class TorchSGD(keras.optimizers.SGD):
    """SGD with PyTorch's momentum buffer and coupled (L2) weight decay.

    Update per variable ``w`` with (clipped) gradient ``g`` and learning rate ``lr``::

        d = g + coupled_weight_decay * w
        buf = momentum * buf + d        # buf starts at 0, so the first buf equals d
        w = w - lr * buf                # momentum 0: w = w - lr * d

    Args:
        learning_rate: A float, a schedule or a callable, as for any Keras optimizer.
        momentum: Momentum factor in [0, 1).
        coupled_weight_decay: L2 factor added to the gradient (PyTorch's ``weight_decay``).
        **kwargs: Other ``keras.optimizers.Optimizer`` arguments (``global_clipnorm``,
            ``name``, ...). Keras' decoupled ``weight_decay`` and ``nesterov`` are rejected:
            use ``coupled_weight_decay``.

    Raises:
        ValueError: On a momentum outside [0, 1), a negative decay, or a Keras ``weight_decay``
            or ``nesterov`` argument.
    """

    def __init__(
        self,
        learning_rate=0.025,
        momentum=0.9,
        coupled_weight_decay=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                f"TorchSGD takes coupled_weight_decay (PyTorch's weight_decay), not Keras' "
                f"decoupled weight_decay={kwargs['weight_decay']!r}"
            )
        if kwargs.pop("nesterov", False):
            raise ValueError("TorchSGD implements plain (not Nesterov) momentum")
        if not 0 <= _check_non_negative("momentum", momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.coupled_weight_decay = _check_non_negative(
            "coupled_weight_decay", coupled_weight_decay
        )

    def update_step(self, gradient, variable, learning_rate):
        """One PyTorch SGD step of ``variable`` (see the class docstring).

        Hyperparameters are converted straight to the variable's dtype (not through float32).
        """
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        direction = keras.ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            decay = keras.ops.convert_to_tensor(self.coupled_weight_decay, variable.dtype)
            direction = keras.ops.add(direction, keras.ops.multiply(decay, variable))
        if self.momentum != 0:
            buffer = self.momentums[self._get_variable_index(variable)]
            momentum = keras.ops.convert_to_tensor(self.momentum, variable.dtype)
            direction = keras.ops.add(keras.ops.multiply(buffer, momentum), direction)
            self.assign(buffer, direction)
        self.assign_sub(variable, keras.ops.multiply(learning_rate, direction))

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov", None)
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config
