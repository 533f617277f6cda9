"""The DARTS ImageNet augmentation (quark0/darts ``cnn/train_imagenet.py``), stateless.

Training: ``RandomResizedCrop(224)`` (a crop of 8% to 100% of the image area with aspect ratio
in [3/4, 4/3], resized bilinearly to the output size), ``RandomHorizontalFlip`` and
``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)``. Testing:
``Resize(256)`` + ``CenterCrop(224)`` (``data.eval_dataset`` with the spec's
``eval_crop_fraction`` 0.875).

Every random choice is a stateless function of a seed, so a stream of augmented batches is a
function of (seed, position) and a resumed run sees the batches an uninterrupted one would.

Differences from torchvision, on purpose or for lack of an equivalent: the crop box comes from
``tf.image.stateless_sample_distorted_bounding_box`` (10 attempts, then the whole image, where
torchvision falls back to a central crop of clamped aspect ratio); ColorJitter applies its four
adjustments in a fixed order (brightness, contrast, saturation, hue) instead of a random
permutation per image.
"""

from __future__ import annotations

import tensorflow as tf

CROP_AREA = (0.08, 1.0)
CROP_ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2}


def random_resized_crop(image, seed, size):
    """One image (uint8 ``[H, W, 3]``) -> a random crop resized to ``size`` (uint8).

    Args:
        image: decoded image of any size.
        seed: stateless seed, int ``[2]``.
        size: ``(height, width)`` of the output.
    """
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RATIO,
        area_range=CROP_AREA,
        max_attempts=10,
    )
    crop = tf.slice(image, begin, extent)
    resized = tf.image.resize(crop, size, method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _uniform(key, batch, low, high):
    return tf.random.stateless_uniform([batch, 1, 1, 1], seed=key, minval=low, maxval=high)


def color_jitter(images, key, jitter=None):
    """Per-image brightness, contrast, saturation and hue jitter of float images in [0, 1].

    Factors are uniform in ``[1 - j, 1 + j]`` for brightness, contrast and saturation and the
    hue shift in ``[-j, j]`` (fraction of the colour wheel), as torchvision's ColorJitter; the
    result is clipped to [0, 1] after each adjustment.

    Args:
        images: float ``[B, H, W, 3]`` in [0, 1].
        key: stateless seed, int ``[2]``.
        jitter: dict with ``brightness``, ``contrast``, ``saturation``, ``hue`` (default
            ``JITTER``, the DARTS ImageNet values).
    """
    jitter = dict(JITTER if jitter is None else jitter)
    batch = tf.shape(images)[0]
    keys = tf.unstack(tf.random.experimental.stateless_split(key, 4))
    if jitter["brightness"]:
        factor = _uniform(keys[0], batch, 1 - jitter["brightness"], 1 + jitter["brightness"])
        images = tf.clip_by_value(images * factor, 0.0, 1.0)
    if jitter["contrast"]:
        factor = _uniform(keys[1], batch, 1 - jitter["contrast"], 1 + jitter["contrast"])
        mean = tf.reduce_mean(tf.image.rgb_to_grayscale(images), axis=[1, 2, 3], keepdims=True)
        images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 1.0)
    if jitter["saturation"]:
        factor = _uniform(keys[2], batch, 1 - jitter["saturation"], 1 + jitter["saturation"])
        gray = tf.image.rgb_to_grayscale(images)
        images = tf.clip_by_value((images - gray) * factor + gray, 0.0, 1.0)
    if jitter["hue"]:
        shift = _uniform(keys[3], batch, -jitter["hue"], jitter["hue"])[..., 0]
        hsv = tf.image.rgb_to_hsv(images)
        hue = tf.math.floormod(hsv[..., 0] + shift, 1.0)
        images = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
        images = tf.clip_by_value(images, 0.0, 1.0)
    return images


def flip(images, key):
    """Flips each image of a batch horizontally with probability 1/2."""
    flips = tf.random.stateless_uniform([tf.shape(images)[0]], seed=key) < 0.5
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
