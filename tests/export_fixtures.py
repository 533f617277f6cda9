"""Helpers of the export tests: what the SavedModel computes, through the Keras model."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ilnas_tf import export


def keras_probabilities(model, images, mean, std):
    """``(probabilities, logits)`` of the Keras ``model`` on uint8 ``images``, preprocessed as
    the SavedModel's serving signature does."""
    logits = tf.cast(
        model(export.preprocess(np.asarray(images), mean, std), training=False), tf.float32
    )
    return tf.nn.softmax(logits).numpy(), logits.numpy()
