"""Learners of interleaving learning: an encoder (W_k) and a head (H_k) behind flat buffers.

A ``Learner`` owns one ``SearchEncoder`` and one ``ClassifierHead`` and evaluates them as a
pure function of *flat* weight vectors (``loss(encoder_flat, head_flat, mixing, images,
labels)``) through Keras' ``stateless_call``. Its trainable state lives in ``LearnerState``
objects: the encoder weights, the head weights and their SGD momentum buffers, each one flat
``tf.Variable``. Flat buffers keep the compiled graph small: a virtual SGD step, the proximal
term ``lambda * ||W - W_prev||^2`` and the optimizer update are a handful of ops per learner
instead of a handful per layer variable.

Mixed precision (``precision``): when the encoder and head carry a mixed Keras dtype policy
(``dtype='mixed_bfloat16'`` or ``'mixed_float16'``) they compute in that dtype while every flat
buffer stays float32: the flat weights are cast inside the forward pass, so gradients with
respect to them (and to the mixing weights) are float32, and the logits are cast to float32
before the cross-entropy. ``loss_scale`` is the float16 loss scale the stage computations use
(``stage_functions``).

Batch normalisation: the supernet normalises with batch statistics and keeps no running
statistics (see ``ops``), so learners share no BN state and each stage's forward pass depends
only on (A, W, H, batch).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import precision


def flatten(tensors):
    """Concatenates tensors into one 1-D tensor."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


class FlatLayout:
    """Shapes of a list of variables and the inverse of ``flatten``."""

    def __init__(self, variables):
        self.shapes = [tuple(v.shape) for v in variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = int(sum(self.sizes))

    def unflatten(self, flat):
        parts = tf.split(flat, self.sizes) if len(self.sizes) > 1 else [flat]
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]


class LearnerState(tf.Module):
    """Trainable state of one learner (or of one (learner, round) stage copy).

    Attributes:
      encoder_weights: flat encoder weights W.
      head_weights: flat head weights H.
      encoder_momentum, head_momentum: SGD momentum buffers (zeros at start, as PyTorch's
        first step ``buf = grad`` equals ``momentum * 0 + grad``).
    """

    def __init__(self, encoder_flat, head_flat, name=None):
        super().__init__(name=name)
        # Every replica computes the same update from all-reduced gradients.
        same = tf.VariableAggregation.ONLY_FIRST_REPLICA

        def variable(value, name):
            return tf.Variable(value, name=name, aggregation=same)

        self.encoder_weights = variable(encoder_flat, "encoder_weights")
        self.head_weights = variable(head_flat, "head_weights")
        self.encoder_momentum = variable(tf.zeros_like(encoder_flat), "encoder_momentum")
        self.head_momentum = variable(tf.zeros_like(head_flat), "head_momentum")


class Learner:
    """Learner k: encoder + head evaluated at flat weights, with its own states.

    Args:
      encoder: a ``SearchEncoder`` (W_k).
      head: a ``ClassifierHead`` (H_k) with this learner's class count.
      image_shape: ``(height, width, channels)`` of this learner's images.
      name: used in metric names.
      num_states: number of weight copies (1, or M for one copy per round).
      loss_scale: ``None`` (no scaling) or a power of two: the stage computations scale the
        loss by it before differentiating and divide the results by it (float16 loss scaling,
        ``precision``). The encoder and head must share one dtype policy.
      skip_dropout_rate: ``None`` or a scalar ``tf.Variable``: P-DARTS' dropout rate on the
        stride-1 skip-connects of an encoder built with ``skip_dropout=True``, applied to the
        batches that carry noise ids (``logits``'s ``noise``). One variable shared by every
        learner of a search (the stage functions trace one learner per structure).
    """

    def __init__(
        self,
        encoder,
        head,
        image_shape,
        name="learner",
        num_states=1,
        loss_scale=None,
        skip_dropout_rate=None,
    ):
        self.encoder = encoder
        self.head = head
        self.name = name
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (height, width, channels), got {image_shape!r}")
        if encoder.dtype_policy.name != head.dtype_policy.name:
            raise ValueError(
                f"learner {name}: the encoder's dtype policy {encoder.dtype_policy.name!r} and "
                f"the head's {head.dtype_policy.name!r} differ: expected one policy for both"
            )
        self.loss_scale = precision.check_loss_scale("loss_scale", loss_scale)
        self.skip_dropout_rate = skip_dropout_rate
        if (skip_dropout_rate is not None) != bool(getattr(encoder, "skip_dropout", False)):
            raise ValueError(
                f"learner {name}: skip_dropout_rate={skip_dropout_rate!r} needs an encoder built "
                "with skip_dropout=True, and such an encoder needs a rate variable"
            )
        edges, num_ops = encoder.mixing_shape
        uniform = tf.fill([edges, num_ops], tf.constant(1.0 / num_ops, encoder.compute_dtype))
        dummy = tf.zeros((2,) + self.image_shape, encoder.compute_dtype)
        head(encoder(dummy, uniform, uniform))
        self.encoder_layout = FlatLayout(encoder.trainable_variables)
        self.head_layout = FlatLayout(head.trainable_variables)
        encoder_flat = flatten(encoder.trainable_variables)
        head_flat = flatten(head.trainable_variables)
        self.states = [
            LearnerState(encoder_flat, head_flat, name=f"{name}_state{i}")
            for i in range(num_states)
        ]

    def add_states(self, count):
        """Appends ``count`` weight copies that start equal to the first (zero momentum).

        One copy per round (the paper's W_k^(m)) starts from the same initial weights; the
        engine adds the copies its configuration needs (create it in ``strategy.scope()``).
        """
        first = self.states[0]
        for _ in range(count):
            self.states.append(
                LearnerState(
                    tf.convert_to_tensor(first.encoder_weights),
                    tf.convert_to_tensor(first.head_weights),
                    name=f"{self.name}_state{len(self.states)}",
                )
            )

    @property
    def num_encoder_weights(self):
        return self.encoder_layout.size

    @property
    def num_head_weights(self):
        return self.head_layout.size

    @property
    def mixed(self):
        """Whether the layers compute in a lower dtype than their (flat) weights."""
        return self.encoder.compute_dtype != self.encoder.variable_dtype

    def _noise_arguments(self, noise):
        """The encoder's ``skip_noise`` keyword for a batch's noise ids (none without)."""
        if noise is None or self.skip_dropout_rate is None:
            return {}
        rate = tf.cast(self.skip_dropout_rate, self.encoder.compute_dtype)
        return {"skip_noise": (rate, noise)}

    def logits(self, encoder_flat, head_flat, mixing, images, noise=None):
        """Logits at the given flat weights and mixing weights ``(normal, reduce)``.

        In the weights' dtype (float32 under a mixed policy, where the layers compute in
        bfloat16 / float16). ``noise``: the batch's noise ids (``data.with_noise_ids``) or
        None; with a ``skip_dropout_rate`` they select the batch's skip-connect dropout masks
        (every evaluation on one batch sees the same masks); without noise no dropout.
        """
        extra = self._noise_arguments(noise)
        if not self.mixed:
            features, _ = self.encoder.stateless_call(
                self.encoder_layout.unflatten(encoder_flat),
                [],
                images,
                mixing[0],
                mixing[1],
                **extra,
            )
            logits, _ = self.head.stateless_call(
                self.head_layout.unflatten(head_flat), [], features
            )
            return logits
        # ``stateless_call`` runs ``call`` outside the layer's autocast scope (the stem would
        # compute in float32); calling the layer inside a ``StatelessScope`` casts the inputs
        # and every variable read to the compute dtype, differentiably.
        with keras.StatelessScope(
            state_mapping=list(
                zip(self.encoder.trainable_variables, self.encoder_layout.unflatten(encoder_flat))
            )
        ):
            features = self.encoder(images, mixing[0], mixing[1], **extra)
        with keras.StatelessScope(
            state_mapping=list(
                zip(self.head.trainable_variables, self.head_layout.unflatten(head_flat))
            )
        ):
            logits = self.head(features)
        return tf.cast(logits, self.encoder.variable_dtype)

    def loss(self, encoder_flat, head_flat, mixing, images, labels, noise=None):
        """Cross-entropy averaged over the *global* batch, and the logits.

        With several replicas each one returns its share (sum over its examples divided by
        the global batch size): the all-reduced sum is the mean over the global batch.
        ``noise``: see ``logits``.
        """
        logits = self.logits(encoder_flat, head_flat, mixing, images, noise)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.cast(labels, tf.int32), logits
        )
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1:
            return tf.reduce_mean(per_example), logits
        global_batch = tf.cast(tf.shape(per_example)[0] * replicas, per_example.dtype)
        return tf.reduce_sum(per_example) / global_batch, logits

    def sync_layers(self, state_index=-1):
        """Copies a state's flat weights into the Keras encoder and head layers.

        Only the flat ``states`` train; call this (or ``InterleavingEngine.sync_layers``) to
        read trained weights through the layers, e.g. to save or reuse a trained encoder.
        ``state_index``: which weight copy (the last round's by default).
        """
        state = self.states[state_index]
        for var, value in zip(
            self.encoder.trainable_variables,
            self.encoder_layout.unflatten(state.encoder_weights),
        ):
            var.assign(value)
        for var, value in zip(
            self.head.trainable_variables, self.head_layout.unflatten(state.head_weights)
        ):
            var.assign(value)


def accuracy(logits, labels):
    """Top-1 accuracy of a batch."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))
