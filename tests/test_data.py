"""Tests for ilnas_tf.data: search/train/eval pipelines on the synthetic dataset and fake CIFAR."""

import os

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ilnas_tf import data, synthetic_data

FINE = "ilnas_synthetic/fine"
COARSE = "ilnas_synthetic/coarse"
FAKE_CIFAR_TRAIN, FAKE_CIFAR_TEST = data_fixtures.FAKE_CIFAR_TRAIN, data_fixtures.FAKE_CIFAR_TEST


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("synthetic")
    synthetic_data.prepare(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """cifar10 and cifar100 prepared by their real TFDS builders from fake archives."""
    return data_fixtures.prepare_fake_cifar(
        tmp_path_factory.mktemp("cifar"), tmp_path_factory.mktemp("sources")
    )


def _take(dataset, count):
    iterator = iter(dataset)
    return [tuple(t.numpy() for t in next(iterator)) for _ in range(count)]


def _pixels(images, spec):
    """Inverts the normalisation: float images -> uint8 pixel values."""
    values = (images * np.array(spec.std) + np.array(spec.mean)) * 255.0
    return np.round(values).astype(np.int32)


def _keys(images):
    return [image.tobytes() for image in np.asarray(images)]


def _epoch_keys(dataset, num_examples, batch_size):
    batches = _take(dataset, num_examples // batch_size)
    return _keys(np.concatenate([images for images, _ in batches]))


def test_registry():
    assert set(data.DATASETS) == {"cifar10", "cifar100", "imagenet2012", FINE, COARSE}
    cifar10 = data.get_spec("cifar10")
    assert cifar10.mean == (0.49139968, 0.48215827, 0.44653124)
    assert cifar10.std == (0.24703233, 0.24348505, 0.26158768)
    assert data.get_spec("cifar100").mean == (0.5071, 0.4865, 0.4409)
    assert data.get_spec("cifar100").num_classes == 100
    assert data.get_spec("imagenet2012").test_split == "validation"
    assert data.get_spec(FINE).num_classes == 10 and data.get_spec(COARSE).num_classes == 5
    assert data.get_spec(FINE).mean == synthetic_data.FINE_MEAN


def test_search_batches(synthetic_dir):
    search = data.search_datasets(FINE, 16, data_dir=synthetic_dir, seed=1)
    assert (search.num_train, search.num_val, search.num_holdout) == (2500, 2500, 0)
    assert search.holdout is None and search.spec is data.get_spec(FINE)
    for dataset in (search.train, search.val):
        images, labels = next(iter(dataset))
        assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
        assert labels.shape == (16,) and labels.dtype == tf.int32
        assert 0 <= labels.numpy().min() and labels.numpy().max() < 10


@pytest.mark.parametrize(
    "split, sizes", [("paper", (2500, 2500, 0)), ("ablation", (2250, 2250, 500))]
)
def test_search_splits_partition_the_training_set(synthetic_dir, split, sizes):
    search = data.search_datasets(
        COARSE, 50, split=split, data_dir=synthetic_dir, augment=False, augment_val=False
    )
    assert (search.num_train, search.num_val, search.num_holdout) == sizes
    train = _epoch_keys(search.train, sizes[0], 50)  # one epoch = each example once
    val = _epoch_keys(search.val, sizes[1], 50)
    holdout = _keys(np.concatenate([x for x, _ in search.holdout])) if sizes[2] else []
    assert (len(set(train)), len(set(val)), len(holdout)) == sizes
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(holdout)
    full = data.eval_dataset(COARSE, 500, split="train", data_dir=synthetic_dir)
    assert set(train) | set(val) | set(holdout) == set(_keys(np.concatenate([x for x, _ in full])))
    two_epochs = _epoch_keys(search.train, 2 * sizes[0], 50)
    assert two_epochs[: sizes[0]] == train and set(two_epochs[sizes[0] :]) == set(train)
    assert two_epochs[sizes[0] :] != train  # reshuffled every epoch


def test_eval_dataset_is_normalised_and_finite(synthetic_dir):
    batches = list(data.eval_dataset(FINE, 300, data_dir=synthetic_dir))
    assert [len(labels) for _, labels in batches] == [300, 300, 300, 100]
    images = np.concatenate([x.numpy() for x, _ in batches])
    np.testing.assert_allclose(images.mean((0, 1, 2)), 0.0, atol=0.05)
    np.testing.assert_allclose(images.std((0, 1, 2)), 1.0, atol=0.05)
    pixels = _pixels(images, data.get_spec(FINE))
    assert pixels.min() == 0 and pixels.max() == 255


def test_augmentation_crops_and_flips_the_same_examples(synthetic_dir):
    spec = data.get_spec(FINE)
    plain = data.search_datasets(FINE, 64, data_dir=synthetic_dir, seed=5, augment=False)
    augmented = data.search_datasets(FINE, 64, data_dir=synthetic_dir, seed=5)
    (originals, labels), (crops, crop_labels) = (
        _take(plain.train, 1)[0],
        _take(augmented.train, 1)[0],
    )
    np.testing.assert_array_equal(labels, crop_labels)  # the shuffle ignores augmentation
    originals, crops = _pixels(originals, spec), _pixels(crops, spec)
    padded = np.pad(originals, [(0, 0), (4, 4), (4, 4), (0, 0)])  # zero pixels, as DARTS
    moves = []
    for original, crop in zip(padded, crops):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(crop, (original[:, ::-1] if flip else original)[dy:dy + 32, dx:dx + 32])
        ]  # fmt: skip
        assert matches, "augmented image is not a padded crop (+ flip) of its source"
        moves.append(matches[0])
    assert len({m[:2] for m in moves}) > 10 and 10 < sum(m[2] for m in moves) < 54


@pytest.mark.parametrize("in_memory", [True, False])
def test_same_seed_same_batches_other_seed_other_batches(synthetic_dir, in_memory):
    def batches(seed):
        search = data.search_datasets(
            FINE, 8, data_dir=synthetic_dir, seed=seed, in_memory=in_memory, shuffle_buffer=500
        )
        return _take(search.train, 3), _take(search.val, 3)

    (train_a, val_a), (train_b, val_b), (train_c, _) = batches(3), batches(3), batches(4)
    for a, b in zip(train_a + val_a, train_b + val_b):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(train_a[0][0], train_c[0][0])
    assert not np.array_equal(train_a[0][0], val_a[0][0])


@pytest.mark.parametrize("in_memory", [True, False])
def test_iterator_checkpoint_restores_the_stream(synthetic_dir, tmp_path, in_memory):
    def pipeline():
        return data.search_datasets(
            COARSE, 16, data_dir=synthetic_dir, seed=2, in_memory=in_memory, shuffle_buffer=300
        ).train

    uninterrupted = _take(pipeline(), 9)[5:]
    iterator = iter(pipeline())
    for _ in range(5):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).save(os.fspath(tmp_path / "ckpt"))
    after_save = [tuple(t.numpy() for t in next(iterator)) for _ in range(4)]
    restored = iter(pipeline())  # a fresh pipeline, as in a new process
    tf.train.Checkpoint(iterator=restored).restore(path).assert_consumed()
    after_restore = [tuple(t.numpy() for t in next(restored)) for _ in range(4)]
    for a, b, c in zip(uninterrupted, after_save, after_restore):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[1], c[1])


@pytest.mark.parametrize("in_memory", [True, False])
def test_start_batch_continues_the_stream(synthetic_dir, in_memory):
    def search(start):
        return data.search_datasets(
            COARSE, 16, data_dir=synthetic_dir, seed=2, in_memory=in_memory, shuffle_buffer=300,
            start_batch=start,
        )  # fmt: skip

    full = search(0)
    resumed = search((5, 2))
    for whole, tail in ((full.train, resumed.train), (full.val, resumed.val)):
        skip = 5 if whole is full.train else 2
        for a, b in zip(_take(whole, skip + 3)[skip:], _take(tail, 3)):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    trained = data.train_dataset(COARSE, 16, data_dir=synthetic_dir, cutout_length=8)
    later = data.train_dataset(COARSE, 16, data_dir=synthetic_dir, cutout_length=8, start_batch=4)
    np.testing.assert_array_equal(_take(trained.dataset, 5)[4][0], _take(later.dataset, 1)[0][0])
    with pytest.raises(ValueError, match="start_batch"):
        data.search_datasets(COARSE, 16, data_dir=synthetic_dir, start_batch=-1)


def test_train_dataset_with_cutout(synthetic_dir):
    train = data.train_dataset(
        COARSE, 96, data_dir=synthetic_dir, augment=False, cutout_length=8, seed=1
    )
    assert (train.num_examples, train.steps_per_epoch) == (5000, 53)
    images, labels = next(iter(train.dataset))
    assert images.shape == (96, 32, 32, 3) and labels.shape == (96,)
    holes = np.all(images.numpy() == 0.0, axis=-1)  # normalised pixels are never exactly 0
    for hole in holes:
        rows, cols = np.nonzero(hole.any(1))[0], np.nonzero(hole.any(0))[0]
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert hole.sum() == len(rows) * len(cols)  # one axis-aligned rectangle
        assert hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()


def test_image_size_resizes(synthetic_dir):
    search = data.search_datasets(FINE, 4, data_dir=synthetic_dir, image_size=16, in_memory=False)
    assert next(iter(search.train))[0].shape == (4, 16, 16, 3)
    assert next(iter(data.eval_dataset(FINE, 4, data_dir=synthetic_dir, image_size=48)))[
        0
    ].shape == (4, 48, 48, 3)


def test_bad_arguments(synthetic_dir):
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar1000'.*cifar10, cifar100"):
        data.search_datasets("cifar1000", 8)
    with pytest.raises(ValueError, match=r"unknown search split 'half'.*paper, ablation"):
        data.search_datasets(FINE, 8, split="half", data_dir=synthetic_dir)
    for batch_size in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            data.search_datasets(FINE, batch_size, data_dir=synthetic_dir)
        with pytest.raises(ValueError, match="batch_size"):
            data.eval_dataset(FINE, batch_size, data_dir=synthetic_dir)
    with pytest.raises(ValueError, match="seed"):
        data.search_datasets(FINE, 8, data_dir=synthetic_dir, seed=-1)
    with pytest.raises(ValueError, match="cutout_length"):
        data.train_dataset(FINE, 8, data_dir=synthetic_dir, cutout_length=-4)
    with pytest.raises(ValueError, match="shuffle_buffer=0 is invalid: expected an integer >= 1"):
        data.search_datasets(FINE, 8, data_dir=synthetic_dir, in_memory=False, shuffle_buffer=0)
    with pytest.raises(ValueError, match="image_size"):
        data.eval_dataset(FINE, 8, data_dir=synthetic_dir, image_size=0)
    with pytest.raises(ValueError, match=r"invalid split 'validation'.*train, test"):
        data.eval_dataset(FINE, 8, split="validation", data_dir=synthetic_dir)


def test_splits_too_small(tmp_path):
    synthetic_data.prepare(tmp_path, configs=("fine",), train_size=40, test_size=10)
    with pytest.raises(
        ValueError, match=r"'train\[:50%\]'.*has 20 examples, fewer than one batch of 32"
    ):
        data.search_datasets(FINE, 32, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"split 'train\[100%:\]'.* is empty"):
        data.eval_dataset(FINE, 8, split="train[100%:]", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_unprepared_dataset_is_not_downloaded(tmp_path, name):
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.search_datasets(name, 8, data_dir=tmp_path)
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert f"dataset {name!r} is not prepared" in message and os.fspath(tmp_path) in message
    assert f"tfds.builder({name!r}" in message and "download_and_prepare()" in message
    assert "data_dir=" in message
    assert not (tmp_path / name).exists()


def test_synthetic_dataset_is_prepared_on_demand(tmp_path):
    search = data.search_datasets(COARSE, 8, data_dir=tmp_path)
    assert search.num_train == 2500 and next(iter(search.train))[0].shape == (8, 32, 32, 3)
    assert tfds.builder(COARSE, data_dir=tmp_path).is_prepared()
    assert not tfds.builder(FINE, data_dir=tmp_path).is_prepared()  # only what was asked


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_through_the_same_pipelines(cifar_dir, name):
    spec = data.get_spec(name)
    paper = data.search_datasets(name, 20, data_dir=cifar_dir, augment=False, augment_val=False)
    assert (paper.num_train, paper.num_val, paper.num_holdout) == (100, 100, 0)
    train, val = _epoch_keys(paper.train, 100, 20), _epoch_keys(paper.val, 100, 20)
    assert len(set(train)) == len(set(val)) == 100 and not set(train) & set(val)
    ablation = data.search_datasets(name, 10, split="ablation", data_dir=cifar_dir)
    assert (ablation.num_train, ablation.num_val, ablation.num_holdout) == (90, 90, 20)
    images, labels = next(iter(ablation.train))
    assert images.shape == (10, 32, 32, 3) and images.dtype == tf.float32
    assert labels.numpy().min() >= 0 and labels.numpy().max() < spec.num_classes
    assert sum(len(y) for _, y in ablation.holdout) == 20
    test_images = np.concatenate([x for x, _ in data.eval_dataset(name, 16, data_dir=cifar_dir)])
    assert test_images.shape == (FAKE_CIFAR_TEST, 32, 32, 3)
    pixels = _pixels(test_images, spec)  # uniform random pixels, CIFAR normalisation
    assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_under_tfds_mock_data(cifar_dir, tmp_path, name):
    """``tfds.testing.mock_data`` works with ``MockPolicy.USE_FILES`` and the metadata files."""
    with data_fixtures.mock_cifar(cifar_dir, tmp_path, num_examples=64, names=(name,)):
        search = data.search_datasets(name, 16, data_dir=tmp_path)
        images, labels = next(iter(search.val))
        test_batch = next(iter(data.eval_dataset(name, 16, data_dir=tmp_path)))
    assert images.shape == (16, 32, 32, 3) and test_batch[0].shape == (16, 32, 32, 3)
    assert labels.numpy().max() < data.get_spec(name).num_classes
