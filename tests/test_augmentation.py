"""The DARTS ImageNet augmentation: random resized crop, colour jitter, resize-256 centre crop."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import augmentation, data, synthetic_data

FINE = "ilnas_synthetic/fine"


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("synthetic")
    synthetic_data.prepare(data_dir, configs=("fine",))
    return data_dir


def _coordinate_image(height=240, width=360):
    """Red encodes the row, green the column (so a crop reveals its box)."""
    rows = np.repeat(np.linspace(0, 255, height)[:, None], width, 1)
    cols = np.repeat(np.linspace(0, 255, width)[None, :], height, 0)
    return tf.constant(np.stack([rows, cols, np.zeros_like(rows)], -1).round().astype(np.uint8))


def test_random_resized_crop_boxes_follow_the_area_and_aspect_ranges():
    image, (height, width) = _coordinate_image(), (240, 360)
    areas, ratios = [], []
    for seed in range(40):
        crop = augmentation.random_resized_crop(image, tf.constant([seed, 7]), (32, 32)).numpy()
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        # The crop's row/column extent, from the coordinate channels at its corners.
        rows = (crop[-1, :, 0].mean() - crop[0, :, 0].mean()) / 255 * (height - 1) * 32 / 31
        cols = (crop[:, -1, 1].mean() - crop[:, 0, 1].mean()) / 255 * (width - 1) * 32 / 31
        areas.append(rows * cols / (height * width))
        ratios.append(cols / rows)
    assert 0.08 * 0.85 <= min(areas) and max(areas) <= 1.05
    assert 0.75 * 0.85 <= min(ratios) and max(ratios) <= 4 / 3 * 1.15
    assert max(areas) - min(areas) > 0.3  # really random
    again = augmentation.random_resized_crop(image, tf.constant([3, 7]), (32, 32))
    first = augmentation.random_resized_crop(image, tf.constant([3, 7]), (32, 32))
    np.testing.assert_array_equal(again.numpy(), first.numpy())


def test_color_jitter_ranges_and_invariants():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0.2, 0.6, size=(16, 8, 8, 3)).astype(np.float32))
    key = tf.constant([1, 2])
    none = dict.fromkeys(augmentation.JITTER, 0.0)
    np.testing.assert_array_equal(augmentation.color_jitter(images, key, none).numpy(), images)
    bright = augmentation.color_jitter(images, key, {**none, "brightness": 0.4}).numpy()
    factors = (bright / images.numpy()).reshape(16, -1)
    np.testing.assert_allclose(factors, factors[:, :1] * np.ones_like(factors), rtol=1e-5)
    assert 0.6 <= factors.min() and factors.max() <= 1.4 and np.ptp(factors[:, 0]) > 0.2
    gray = tf.constant(np.repeat(rng.uniform(0, 1, (4, 8, 8, 1)), 3, -1).astype(np.float32))
    for name in ("saturation", "hue"):  # a gray image has no colour to change
        out = augmentation.color_jitter(gray, key, {**none, name: augmentation.JITTER[name]})
        # (float32 grayscale weights sum to 1 within 1e-4)
        np.testing.assert_allclose(out.numpy(), gray.numpy(), atol=2e-4, err_msg=name)
    everything = augmentation.color_jitter(images, key).numpy()
    assert everything.min() >= 0.0 and everything.max() <= 1.0
    assert np.abs(everything - images.numpy()).max() > 0.05


def test_eval_resize_then_centre_crop():
    image = _coordinate_image(100, 150)
    got = data._resize_example(image, (28, 28), crop_fraction=0.875).numpy()
    resized = tf.image.resize(image, (32, 48), antialias=True)  # shorter side 28 / 0.875 = 32
    want = tf.image.resize_with_crop_or_pad(resized, 28, 28)
    want = tf.cast(tf.clip_by_value(tf.round(want), 0, 255), tf.uint8).numpy()
    np.testing.assert_array_equal(got, want)
    assert data.DATASETS["imagenet2012"].eval_crop_fraction == 0.875
    assert data.DATASETS["imagenet2012"].augmentation == "resized_crop"


def test_resized_crop_stream_is_deterministic_and_resumable(synthetic_dir):
    def stream(start=0, seed=0):
        return data.train_dataset(
            FINE, 8, data_dir=synthetic_dir, seed=seed, in_memory=False, shuffle_buffer=200,
            augmentation_method="resized_crop", start_batch=start,
        ).dataset  # fmt: skip

    def take(dataset, count):
        iterator = iter(dataset)
        return [next(iterator)[0].numpy() for _ in range(count)]

    full = take(stream(), 4)
    assert full[0].shape == (8, 32, 32, 3) and np.isfinite(full[0]).all()
    np.testing.assert_array_equal(take(stream(start=3), 1)[0], full[3])
    assert np.abs(take(stream(seed=1), 1)[0] - full[0]).max() > 0.1
    plain = data.train_dataset(
        FINE, 8, data_dir=synthetic_dir, in_memory=False, shuffle_buffer=200
    ).dataset  # the spec's pad/crop augmentation: other images from the same examples
    assert np.abs(take(plain, 1)[0] - full[0]).max() > 0.1
    with pytest.raises(ValueError, match="needs a streamed pipeline"):
        data.train_dataset(FINE, 8, data_dir=synthetic_dir, augmentation_method="resized_crop")
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.train_dataset(FINE, 8, data_dir=synthetic_dir, augmentation_method="mixup")
