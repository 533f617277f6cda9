"""Tests for ilnas_tf.synthetic_data: the embedded, generated ``ilnas_synthetic`` TFDS dataset."""

import hashlib
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ilnas_tf import synthetic_data as S

SMALL_TRAIN, SMALL_TEST = 60, 20
# sha256 of the first 20 examples (images and labels) of every (config, split): the generator
# only uses IEEE basic arithmetic and uniform draws, so these bytes are the same on every machine.
GOLDEN_DIGEST = "b6519a3039102be9653265a4c1c2db5e1cf2628232ac70a6655d1c6e52512329"


@pytest.fixture(scope="module")
def train_splits():
    """The full train split of each config, generated without TFDS."""
    return {name: S.generate_images(name, "train") for name in S.CONFIG_NAMES}


@pytest.fixture(scope="module")
def prepared_dirs(tmp_path_factory):
    """Two independent small TFDS preparations of both configs."""
    dirs = [tmp_path_factory.mktemp(f"tfds{i}") for i in range(2)]
    for data_dir in dirs:
        S.prepare(data_dir, train_size=SMALL_TRAIN, test_size=SMALL_TEST)
    return dirs


def _read(data_dir, name, split):
    builder = tfds.builder(f"ilnas_synthetic/{name}", data_dir=data_dir)
    batch = next(iter(builder.as_dataset(split=split, batch_size=10_000)))
    return batch["image"].numpy(), batch["label"].numpy()


def test_generation_is_deterministic_and_pinned():
    digest = hashlib.sha256()
    for name in S.CONFIG_NAMES:
        for split in ("train", "test"):
            images, labels = S.generate_images(name, split, 20)
            again, again_labels = S.generate_images(name, split, 20)
            np.testing.assert_array_equal(images, again)
            np.testing.assert_array_equal(labels, again_labels)
            digest.update(images.tobytes())
            digest.update(labels.tobytes())
    assert digest.hexdigest() == GOLDEN_DIGEST


def test_example_depends_on_config_split_and_index():
    first = S.generate_example("fine", "train", 0)[0]
    assert not np.array_equal(first, S.generate_example("fine", "test", 0)[0])
    assert not np.array_equal(first, S.generate_example("fine", "train", 10)[0])  # same class
    # Coarse example 0 is fine class 0 too, but another image (as CIFAR-10 vs CIFAR-100).
    assert S.generate_example("coarse", "train", 0)[2] == 0
    assert not np.array_equal(first, S.generate_example("coarse", "train", 0)[0])


@pytest.mark.parametrize("name", S.CONFIG_NAMES)
def test_shapes_labels_and_balance(train_splits, name):
    images, labels = train_splits[name]
    num_classes = len(S.FINE_CLASS_NAMES if name == "fine" else S.COARSE_CLASS_NAMES)
    assert images.shape == (S.SPLIT_SIZES["train"], 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == num_classes - 1
    np.testing.assert_array_equal(
        np.bincount(labels), np.full(num_classes, S.SPLIT_SIZES["train"] // num_classes)
    )
    assert images.min() == 0 and images.max() == 255  # full dynamic range used
    assert len({image.tobytes() for image in images}) == len(images)  # no duplicates


@pytest.mark.parametrize("name", S.CONFIG_NAMES)
def test_normalisation_constants_match_train_split(train_splits, name):
    mean, std = S.channel_statistics(train_splits[name][0])
    expected_mean = S.FINE_MEAN if name == "fine" else S.COARSE_MEAN
    expected_std = S.FINE_STD if name == "fine" else S.COARSE_STD
    np.testing.assert_allclose(mean, expected_mean, atol=1e-3)
    np.testing.assert_allclose(std, expected_std, atol=1e-3)


@pytest.mark.parametrize("name", S.CONFIG_NAMES)
def test_mean_colour_does_not_solve_the_task(train_splits, name):
    """Nearest class centroid of the mean colour stays near chance on the test split."""
    images, labels = train_splits[name]
    test_images, test_labels = S.generate_images(name, "test")
    colour, test_colour = (x.reshape(len(x), -1, 3).mean(1) for x in (images, test_images))
    num_classes = labels.max() + 1
    centroids = np.stack([colour[labels == k].mean(0) for k in range(num_classes)])
    distances = ((test_colour[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = np.mean(distances.argmin(1) == test_labels)
    assert accuracy < 1.3 / num_classes


def test_coarse_classes_are_balanced_pairs_of_fine_classes():
    assert len(S.FINE_TO_COARSE) == len(S.FINE_CLASS_NAMES)
    assert sorted(set(S.FINE_TO_COARSE)) == list(range(len(S.COARSE_CLASS_NAMES)))
    fine_counts = np.zeros(len(S.FINE_CLASS_NAMES), int)
    for index in range(200):
        label, fine_class = S.example_label_and_class("coarse", index)
        assert S.FINE_TO_COARSE[fine_class] == label
        fine_counts[fine_class] += 1
        assert S.example_label_and_class("fine", index) == (index % 10, index % 10)
    np.testing.assert_array_equal(fine_counts, 20)


def test_unknown_config_or_split():
    with pytest.raises(ValueError, match="unknown config 'medium'"):
        S.generate_example("medium", "train", 0)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        S.generate_example("fine", "validation", 0)
    with pytest.raises(ValueError, match="unknown ilnas_synthetic config 'medium'"):
        S.prepare("/nonexistent", configs=("medium",))


def test_registered_tfds_builder(prepared_dirs):
    assert "ilnas_synthetic" in tfds.list_builders()
    for name, class_names in (("fine", S.FINE_CLASS_NAMES), ("coarse", S.COARSE_CLASS_NAMES)):
        builder = tfds.builder(f"ilnas_synthetic/{name}", data_dir=prepared_dirs[0])
        assert builder.is_prepared()
        assert builder.info.features["label"].names == list(class_names)
        assert builder.info.features["image"].shape == (32, 32, 3)
        assert builder.info.splits["train"].num_examples == SMALL_TRAIN
        assert builder.info.splits["test"].num_examples == SMALL_TEST
        assert builder.info.supervised_keys == ("image", "label")


@pytest.mark.parametrize("name", S.CONFIG_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_data_is_the_generated_data(prepared_dirs, name, split):
    size = SMALL_TRAIN if split == "train" else SMALL_TEST
    images, labels = _read(prepared_dirs[0], name, split)
    images_again, labels_again = _read(prepared_dirs[1], name, split)
    np.testing.assert_array_equal(images, images_again)  # two preparations, same order too
    np.testing.assert_array_equal(labels, labels_again)
    generated, generated_labels = S.generate_images(name, split, size)
    by_bytes = {image.tobytes(): label for image, label in zip(generated, generated_labels)}
    assert {image.tobytes(): label for image, label in zip(images, labels)} == by_bytes


def test_prepare_never_downloads(tmp_path):
    refuse = mock.Mock(side_effect=AssertionError("download attempted"))
    with (
        mock.patch.object(tfds.download.DownloadManager, "download", refuse),
        mock.patch.object(tfds.download.DownloadManager, "download_and_extract", refuse),
    ):
        (builder,) = S.prepare(tmp_path, configs=("coarse",), train_size=10, test_size=5)
    assert builder.is_prepared() and refuse.call_count == 0
    S.prepare(tmp_path, configs=("coarse",))  # already prepared: reused, not regenerated
    assert (
        tfds.builder("ilnas_synthetic/coarse", data_dir=tmp_path).info.splits["train"].num_examples
        == 10
    )
