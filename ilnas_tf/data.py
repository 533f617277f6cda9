"""TFDS input pipelines for the architecture search and the training of derived networks.

Datasets are named by the registry ``DATASETS`` (``cifar10``, ``cifar100``, ``imagenet2012``,
``ilnas_synthetic/fine``, ``ilnas_synthetic/coarse``) and read with TFDS from a data dir
(default: TFDS' default, ``~/tensorflow_datasets``). Nothing is ever downloaded: CIFAR and
ImageNet must already be prepared there (``DatasetUnavailableError`` says how), the embedded
``ilnas_synthetic`` dataset (``synthetic_data``) is generated on first use.

Search splits (``search_datasets``), as in the DARTS reference (``train_search.py``):

- ``"paper"``: the training set halved, search-train = ``train[:50%]``, search-val =
  ``train[50%:]`` (25K / 25K of CIFAR); no holdout.
- ``"ablation"``: ``train[:45%]`` / ``train[45%:90%]`` / holdout ``train[90%:]`` (22.5K / 22.5K
  / 5K of CIFAR).

The test split is never read by the search. ImageNet training (``train_dataset``) uses the
DARTS ImageNet augmentation (``augmentation``: random resized crop, flip, colour jitter; test
images resized to 256 and centre-cropped to 224). Otherwise augmentation is DARTS': zero-pad 4
(an eighth of the side for other sizes), random crop back to the image size, random horizontal flip, then per-channel
normalisation ``(x / 255 - mean) / std`` in float32. The DARTS reference applies this train
transform to the validation queue too (both queues sample the training set with
``train_transform``), hence ``augment_val=True`` by default.

Determinism and checkpoints: the search and train streams are infinite sequences of batches in
which batch ``t`` depends only on ``(seed, stream, t)``: datasets that fit in memory (CIFAR,
synthetic) are permuted per epoch by a stateless index shuffle keyed on ``(seed, stream,
epoch)``, and the augmentation of batch ``t`` uses stateless random ops keyed on ``(seed, stream,
t)``. Their iterators are checkpointable (``tf.train.Checkpoint(iterator=it)``; the state is a
counter plus the prefetch buffer) and a restored iterator continues with exactly the batches an
uninterrupted one would give. Datasets too large for memory (ImageNet) stream from the TFDS files
through a seeded shuffle buffer (deterministic too; their checkpoints hold the buffer).

Every call builds an independent pipeline, so each learner gets its own infinite iterator, and
learners with datasets of different sizes simply cycle through them at their own pace; give
learners different ``seed`` values when they read the same dataset.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ilnas_tf import augmentation, synthetic_data, validation


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared in the TFDS data dir and cannot be downloaded from here."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to read and normalise one dataset.

    Attributes:
      name: registry name.
      tfds_name: TFDS name (``name/config`` for configs).
      num_classes: number of labels.
      image_shape: ``(height, width, channels)`` of the images the pipelines emit by default.
      mean, std: per-channel normalisation of images scaled to [0, 1].
      train_split, test_split: TFDS split names of the training and the test set.
      num_train_examples: size of the training split, where known.
      in_memory: whether search/train pipelines hold the split in memory (exact per-epoch
        shuffles, tiny checkpoints) instead of streaming it through a shuffle buffer.
      generated: prepared offline on demand (``synthetic_data``).
      manual_download: TFDS needs the source files placed by hand (ImageNet).
      augmentation: training augmentation of ``train_dataset``: ``"pad_crop"`` (DARTS CIFAR:
        pad, random crop, flip) or ``"resized_crop"`` (DARTS ImageNet: random resized crop,
        flip, colour jitter; ``augmentation`` module; streamed datasets only).
      eval_crop_fraction: evaluation images are resized to ``size / eval_crop_fraction`` on
        the shorter side, then centre-cropped to ``size`` (ImageNet: 256 -> 224).
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_split: str = "train"
    test_split: str = "test"
    num_train_examples: int | None = None
    in_memory: bool = True
    generated: bool = False
    manual_download: bool = False
    augmentation: str = "pad_crop"
    eval_crop_fraction: float = 1.0


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            tfds_name="cifar10",
            num_classes=10,
            image_shape=(32, 32, 3),
            mean=(0.49139968, 0.48215827, 0.44653124),
            std=(0.24703233, 0.24348505, 0.26158768),
            num_train_examples=50_000,
        ),
        DatasetSpec(
            name="cifar100",
            tfds_name="cifar100",
            num_classes=100,
            image_shape=(32, 32, 3),
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            num_train_examples=50_000,
        ),
        DatasetSpec(
            name="imagenet2012",
            tfds_name="imagenet2012",
            num_classes=1000,
            image_shape=(224, 224, 3),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            test_split="validation",
            num_train_examples=1_281_167,
            in_memory=False,
            manual_download=True,
            augmentation="resized_crop",
            eval_crop_fraction=0.875,
        ),
        DatasetSpec(
            name="ilnas_synthetic/fine",
            tfds_name="ilnas_synthetic/fine",
            num_classes=len(synthetic_data.FINE_CLASS_NAMES),
            image_shape=(32, 32, 3),
            mean=synthetic_data.FINE_MEAN,
            std=synthetic_data.FINE_STD,
            num_train_examples=synthetic_data.SPLIT_SIZES["train"],
            generated=True,
        ),
        DatasetSpec(
            name="ilnas_synthetic/coarse",
            tfds_name="ilnas_synthetic/coarse",
            num_classes=len(synthetic_data.COARSE_CLASS_NAMES),
            image_shape=(32, 32, 3),
            mean=synthetic_data.COARSE_MEAN,
            std=synthetic_data.COARSE_STD,
            num_train_examples=synthetic_data.SPLIT_SIZES["train"],
            generated=True,
        ),
    )
}

SEARCH_SPLITS = {
    "paper": ("[:50%]", "[50%:]", None),
    "ablation": ("[:45%]", "[45%:90%]", "[90%:]"),
}
"""Slices of the training split: (search-train, search-val, holdout or None)."""

AUGMENTATIONS = ("pad_crop", "resized_crop")
"""Training augmentations (``DatasetSpec.augmentation``)."""

DEFAULT_SHUFFLE_BUFFER = 10_000
"""Shuffle buffer of streamed (not in-memory) datasets."""

_TRAIN_STREAM, _VAL_STREAM, _FULL_TRAIN_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SearchData:
    """Input of one learner's search.

    Attributes:
      train, val: infinite datasets of ``(images float32 [B, H, W, C], labels int32 [B])``.
      holdout: finite, un-augmented batches of the holdout slice (``"ablation"``), else None.
      spec: the dataset's ``DatasetSpec``.
      num_train, num_val, num_holdout: examples in each slice.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    holdout: tf.data.Dataset | None
    spec: DatasetSpec
    num_train: int
    num_val: int
    num_holdout: int


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Input of the training of a derived network (``train_dataset``).

    Attributes:
      dataset: infinite dataset of augmented ``(images, labels)`` batches.
      spec: the dataset's ``DatasetSpec``.
      num_examples: examples in the training split.
      steps_per_epoch: ``ceil(num_examples / batch_size)`` (DARTS keeps the last partial batch).
    """

    dataset: tf.data.Dataset
    spec: DatasetSpec
    num_examples: int
    steps_per_epoch: int


def get_spec(name):
    """Returns the ``DatasetSpec`` of ``name``; ValueError listing the known names otherwise."""
    if isinstance(name, DatasetSpec):
        return name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def get_builder(name, data_dir=None):
    """Returns the prepared TFDS builder of ``name`` without ever downloading.

    The synthetic datasets are generated when missing; others raise
    ``DatasetUnavailableError`` saying how to prepare them.
    """
    spec = get_spec(name)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if spec.generated:
            builder.download_and_prepare()
        else:
            raise DatasetUnavailableError(_unavailable_message(spec, builder, data_dir))
    return builder


def _unavailable_message(spec, builder, data_dir):
    where = os.fspath(data_dir) if data_dir is not None else f"{builder.data_dir_root} (default)"
    if spec.manual_download:
        how = (
            "place the ImageNet archives ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
            f"<data_dir>/downloads/manual, run tfds.builder({spec.tfds_name!r}, "
            "data_dir=<data_dir>).download_and_prepare()"
        )
    else:
        how = (
            f"build it on a machine with internet access with tfds.builder({spec.tfds_name!r})"
            f".download_and_prepare(), copy the resulting ~/tensorflow_datasets/{spec.tfds_name} "
            "folder into a data dir on this machine"
        )
    return (
        f"dataset {spec.name!r} is not prepared in the TFDS data dir {where} (no "
        f"{builder.data_path}) and ilnas_tf never downloads: {how}, and pass "
        "data_dir=<data_dir>."
    )


def _num_examples(builder, split):
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AssertionError) as error:
        known = ", ".join(builder.info.splits) or "unknown"
        raise ValueError(
            f"invalid split {split!r} of dataset {builder.info.full_name}; splits: {known} "
            f"(TFDS slicing such as 'train[:50%]' is allowed): {error}"
        ) from None


def _output_size(spec, image_size):
    if image_size is None:
        return spec.image_shape[:2]
    image_size = validation.check_int("image_size", image_size, 1)
    return image_size, image_size


def _resize_example(image, size, crop_fraction=1.0):
    """Resizes one image: shorter side to ``size / crop_fraction``, then the central
    ``size`` crop (uint8 out)."""
    if image.shape[:2] == tuple(size) and crop_fraction == 1.0:
        return image
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    scale = round(max(size) / crop_fraction) / tf.minimum(height, width)
    new_shape = tf.cast(tf.math.ceil(tf.stack([height * scale, width * scale])), tf.int32)
    resized = tf.image.resize(image, tf.maximum(new_shape, size), antialias=True)
    resized = tf.image.resize_with_crop_or_pad(resized, size[0], size[1])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def standardize(images, mean, std):
    """``(images - mean) / std`` per channel, for float32 images scaled to [0, 1]."""
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def normalize(images, spec):
    """``(images / 255 - mean) / std`` in float32 (uint8 or float pixel values in [0, 255])."""
    return standardize(tf.cast(images, tf.float32) / 255.0, spec.mean, spec.std)


def augment(images, key, padding=4, flip=True):
    """DARTS augmentation of a batch: zero-pad, random crop back to size, random flip.

    Args:
      images: ``[B, H, W, C]`` images (any dtype; padding adds zeros).
      key: stateless seed, int64 ``[2]``; the same key gives the same crops and flips.
      padding: pixels of zero padding per side (the crop offset is uniform in
        ``[0, 2 * padding]``).
      flip: whether to flip each image horizontally with probability 1/2.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    if padding > 0:
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [batch, 2], seed=crop_key, minval=0, maxval=2 * padding + 1, dtype=tf.int32
        )
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        images = augmentation.flip(images, flip_key)
    return images


def cutout(images, key, length):
    """DARTS' Cutout on a batch: zeroes one ``length`` x ``length`` square (clipped at the border)
    centred at a uniformly random pixel of each image."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    y_key, x_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    center_y = tf.random.stateless_uniform(
        [batch, 1], seed=y_key, minval=0, maxval=height, dtype=tf.int32
    )
    center_x = tf.random.stateless_uniform(
        [batch, 1], seed=x_key, minval=0, maxval=width, dtype=tf.int32
    )
    half = length // 2
    rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
    inside_rows = (rows >= center_y - half) & (rows < center_y + half)  # [B, H]
    inside_cols = (cols >= center_x - half) & (cols < center_x + half)  # [B, W]
    hole = inside_rows[:, :, None] & inside_cols[:, None, :]
    return images * tf.cast(~hole, images.dtype)[..., None]


def _example_decoder(builder):
    """``decode(example) -> (uint8 image, int32 label)``, whether or not TFDS decoded the image."""
    image_feature = builder.info.features["image"]

    def decode(example):
        image = example["image"]
        if image.dtype == tf.string:
            image = image_feature.decode_example(image)
        return image, tf.cast(example["label"], tf.int32)

    return decode


def _decode_and_resize(builder, size, crop_fraction=1.0):
    decode = _example_decoder(builder)

    def decode_and_resize(example):
        image, label = decode(example)
        return _resize_example(image, size, crop_fraction), label

    return decode_and_resize


def _decode_and_crop(builder, size, seed, stream):
    """Decode + ``random_resized_crop`` of the example at stream position ``p``."""
    decode = _example_decoder(builder)
    seed_and_stream = tf.constant([seed, stream], tf.int64)

    def decode_and_crop(position, example):
        image, label = decode(example)
        key = tf.random.experimental.stateless_fold_in(seed_and_stream, position)
        return augmentation.random_resized_crop(image, key, size), label

    return decode_and_crop


def _load_in_memory(builder, split, size):
    """The whole split as ``(images uint8 [N, H, W, C], labels int32 [N])`` numpy arrays."""
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    dataset = dataset.map(_decode_and_resize(builder, size), num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(4096).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        return np.zeros((0, *size, 3), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


def _shuffled_batches(
    builder,
    spec,
    split,
    batch_size,
    seed,
    stream,
    size,
    in_memory,
    buffer,
    start_batch=0,
    resized_crop=False,
):
    """Infinite stream of shuffled ``(uint8 images, int32 labels)`` batches and the split size.

    In memory: batch ``t`` holds positions ``t * B .. t * B + B - 1`` of the endless sequence of
    epochs; position ``p`` is example ``index_shuffle(p % n, seed=(seed, stream, p // n))``.
    The stream starts at batch ``start_batch`` (a resumed run continues where it stopped).
    Streamed: a seeded shuffle buffer; ``resized_crop`` crops example ``p`` of the stream with a
    key of ``(seed, stream, p)`` (the DARTS ImageNet augmentation's first part).
    """

    def check_size(num_examples):
        if num_examples < batch_size:
            raise ValueError(
                f"split {split!r} of dataset {spec.name!r} has {num_examples} examples, fewer "
                f"than one batch of {batch_size} (batches drop the remainder)"
            )
        return num_examples

    num_examples = check_size(_num_examples(builder, split))
    if in_memory and resized_crop:
        raise ValueError(
            f"the resized_crop augmentation of dataset {spec.name!r} needs a streamed pipeline "
            "(in_memory=False): it crops the full-size images"
        )
    if in_memory:
        images, labels = _load_in_memory(builder, split, size)
        num_examples = check_size(len(labels))  # differs from the metadata under mock_data
        images, labels = tf.constant(images), tf.constant(labels)
        seed_and_stream = tf.constant([seed, stream], tf.int64)

        def gather(positions):
            epochs = positions // num_examples
            seeds = tf.concat(
                [tf.tile(seed_and_stream[None], [tf.size(positions), 1]), epochs[:, None]], axis=1
            )
            indices = tf.raw_ops.RandomIndexShuffle(
                index=positions % num_examples,
                seed=seeds,
                max_index=tf.constant(num_examples - 1, tf.int64),
                rounds=4,
            )
            return tf.gather(images, indices), tf.gather(labels, indices)

        dataset = tf.data.Dataset.counter(start=start_batch * batch_size)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE), num_examples
    buffer = (
        DEFAULT_SHUFFLE_BUFFER
        if buffer is None
        else validation.check_int("shuffle_buffer", buffer, 1)
    )
    stream_seed = seed * 4 + stream
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=stream_seed),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    dataset = dataset.repeat().shuffle(buffer, seed=stream_seed).enumerate()
    # Skip before decoding: resuming far into a stream costs no decoding.
    dataset = dataset.skip(start_batch * batch_size)
    if resized_crop:
        decode = _decode_and_crop(builder, size, seed, stream)
    else:
        decode_and_resize = _decode_and_resize(builder, size)

        def decode(position, example):
            del position
            return decode_and_resize(example)

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True), num_examples


def _transform_batches(
    dataset,
    spec,
    seed,
    stream,
    augment_images,
    padding,
    cutout_length,
    start_batch=0,
    method="pad_crop",
):
    """Augments (keyed on the batch number), normalises, cuts out; deterministic, prefetched.

    ``method``: ``"pad_crop"`` (pad, crop, flip) or ``"resized_crop"`` (the batches are already
    cropped: flip and colour jitter).
    """
    seed_and_stream = tf.constant([seed, stream], tf.int64)

    def transform(step, batch):
        images, labels = batch
        key = tf.random.experimental.stateless_fold_in(seed_and_stream, step)
        augment_key, cutout_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        if augment_images and method == "resized_crop":
            flip_key, jitter_key = tf.unstack(tf.random.experimental.stateless_split(augment_key))
            pixels = augmentation.flip(tf.cast(images, tf.float32) / 255.0, flip_key)
            images = standardize(augmentation.color_jitter(pixels, jitter_key), spec.mean, spec.std)
        else:
            if augment_images:
                images = augment(images, augment_key, padding=padding)
            images = normalize(images, spec)
        if cutout_length:
            images = cutout(images, cutout_key, cutout_length)
        return images, labels

    dataset = dataset.enumerate(start=start_batch).map(
        transform, num_parallel_calls=tf.data.AUTOTUNE
    )
    return _deterministic(dataset.prefetch(tf.data.AUTOTUNE))


def _deterministic(dataset):
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def _finite_batches(builder, spec, split, batch_size, size):
    num_examples = _num_examples(builder, split)
    if num_examples < 1:
        raise ValueError(f"split {split!r} of dataset {spec.name!r} is empty")
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    decode = _decode_and_resize(builder, size, spec.eval_crop_fraction)
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size).map(
        lambda images, labels: (normalize(images, spec), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _deterministic(dataset.prefetch(tf.data.AUTOTUNE)), num_examples


def search_datasets(
    name,
    batch_size,
    *,
    split="paper",
    data_dir=None,
    seed=0,
    augment=True,
    augment_val=True,
    shuffle_buffer=None,
    image_size=None,
    in_memory=None,
    start_batch=0,
):
    """Search-train / search-val (and holdout) pipelines of one learner.

    Args:
      name: registry name (``DATASETS``).
      batch_size: examples per batch (batches drop the remainder).
      split: ``"paper"`` (train halved 50/50) or ``"ablation"`` (45/45/10 with a holdout).
      data_dir: TFDS data dir (default: TFDS' default).
      seed: seed of the shuffles and augmentations (the val stream uses other keys).
      augment: augment search-train batches.
      augment_val: augment search-val batches too, as the DARTS reference does.
      shuffle_buffer: shuffle buffer of streamed datasets (default ``DEFAULT_SHUFFLE_BUFFER``).
      image_size: square output size (default: the spec's image shape); images are resized
        (shorter side, then the central square) when they differ. Crop padding is
        ``image_size // 8`` (4 for 32x32).
      in_memory: hold the slices in memory (default: the spec's choice).
      start_batch: ``(train, val)`` batch numbers (or one number for both) the infinite
        streams start at: a resumed search continues exactly where it stopped (streamed
        datasets skip, in-memory ones start there at no cost).

    Returns:
      A ``SearchData``; the test split is never read.
    """
    spec = get_spec(name)
    batch_size = validation.check_int("batch_size", batch_size, 1)
    if split not in SEARCH_SPLITS:
        raise ValueError(f"unknown search split {split!r}; known: {', '.join(SEARCH_SPLITS)}")
    seed = validation.check_int("seed", seed, 0, 2**31 - 1)
    size = _output_size(spec, image_size)
    in_memory = spec.in_memory if in_memory is None else bool(in_memory)
    builder = get_builder(spec, data_dir)
    train_slice, val_slice, holdout_slice = SEARCH_SPLITS[split]
    starts = (start_batch, start_batch) if isinstance(start_batch, int) else tuple(start_batch)
    starts = [validation.check_int("start_batch", s, 0) for s in starts]
    streams = []
    for stream, part, augment_part, start in (
        (_TRAIN_STREAM, train_slice, augment, starts[0]),
        (_VAL_STREAM, val_slice, augment_val, starts[1]),
    ):
        batches, count = _shuffled_batches(
            builder, spec, spec.train_split + part, batch_size, seed, stream, size, in_memory,
            shuffle_buffer, start,
        )  # fmt: skip
        batches = _transform_batches(
            batches, spec, seed, stream, augment_part, size[0] // 8, 0, start
        )
        streams.append((batches, count))
    holdout, num_holdout = None, 0
    if holdout_slice is not None:
        holdout, num_holdout = _finite_batches(
            builder, spec, spec.train_split + holdout_slice, batch_size, size
        )
    return SearchData(
        train=streams[0][0],
        val=streams[1][0],
        holdout=holdout,
        spec=spec,
        num_train=streams[0][1],
        num_val=streams[1][1],
        num_holdout=num_holdout,
    )


def train_dataset(
    name,
    batch_size,
    *,
    data_dir=None,
    seed=0,
    augment=True,
    cutout_length=0,
    split="train",
    shuffle_buffer=None,
    image_size=None,
    in_memory=None,
    start_batch=0,
    augmentation_method=None,
):
    """Infinite augmented batches of the whole training split (training of derived networks).

    As DARTS' ``train.py``: pad/crop/flip, normalisation, then Cutout of ``cutout_length``
    (0: none) on the normalised images; ImageNet as ``train_imagenet.py``: random resized crop,
    flip, colour jitter, normalisation (``augmentation``). Arguments as ``search_datasets``;
    ``split`` may be any TFDS split of the dataset (default: its training split);
    ``start_batch`` is one number; ``augmentation_method`` overrides the spec's
    ``augmentation`` (``"pad_crop"`` or ``"resized_crop"``).
    """
    spec = get_spec(name)
    batch_size = validation.check_int("batch_size", batch_size, 1)
    seed = validation.check_int("seed", seed, 0, 2**31 - 1)
    size = _output_size(spec, image_size)
    cutout_length = validation.check_int("cutout_length", cutout_length, 0)
    method = augmentation_method or spec.augmentation
    if method not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {method!r}; expected one of {AUGMENTATIONS}")
    in_memory = spec.in_memory if in_memory is None else bool(in_memory)
    builder = get_builder(spec, data_dir)
    split = spec.train_split if split == "train" else split
    start_batch = validation.check_int("start_batch", start_batch, 0)
    resized_crop = bool(augment) and method == "resized_crop"
    batches, count = _shuffled_batches(
        builder, spec, split, batch_size, seed, _FULL_TRAIN_STREAM, size, in_memory,
        shuffle_buffer, start_batch, resized_crop,
    )  # fmt: skip
    dataset = _transform_batches(
        batches, spec, seed, _FULL_TRAIN_STREAM, augment, size[0] // 8, cutout_length,
        start_batch, method,
    )  # fmt: skip
    return TrainData(dataset, spec, count, math.ceil(count / batch_size))


def eval_dataset(name, batch_size, *, split="test", data_dir=None, image_size=None):
    """Finite, normalised, un-augmented batches (the last one may be smaller).

    Args:
      name: registry name.
      batch_size: examples per batch.
      split: ``"test"`` (the spec's test split, e.g. ``validation`` for ImageNet), ``"train"``,
        or any TFDS split string such as ``"train[90%:]"``.
      data_dir: TFDS data dir.
      image_size: square output size, as in ``search_datasets``.
    """
    spec = get_spec(name)
    batch_size = validation.check_int("batch_size", batch_size, 1)
    size = _output_size(spec, image_size)
    builder = get_builder(spec, data_dir)
    split = {"test": spec.test_split, "train": spec.train_split}.get(split, split)
    return _finite_batches(builder, spec, split, batch_size, size)[0]


def with_noise_ids(dataset, stream_id, start_batch=0):
    """Appends noise ids to every ``(images, labels)`` global batch of an infinite stream.

    The ids are an int64 ``[batch, 3]`` tensor of rows ``(stream_id, batch number, position in
    the batch)``: P-DARTS' skip-connect dropout (``ops.skip_dropout``) draws its masks as a
    stateless function of them, so every evaluation of a loss on one batch sees the same masks
    (exact and finite-difference hypergradients, gradient recompute), a resumed run draws the
    masks an uninterrupted one would, and the replicas of a distributed step, each holding a
    slice of the batch, draw the single-device masks of their rows.

    Args:
      dataset: global batches ``(images, labels)`` (fixed batch size).
      stream_id: an int that tells this stream apart from the run's other streams.
      start_batch: the batch number of the stream's first batch (a resumed stream's position).

    Returns:
      The dataset of ``(images, labels, noise_ids)``.
    """
    stream_id = validation.check_int("stream_id", stream_id, 0)
    start_batch = validation.check_int("start_batch", start_batch, 0)

    def add(number, batch):
        images, labels = batch
        size = tf.shape(labels, out_type=tf.int64)[0]
        ids = tf.stack(
            [
                tf.fill([size], tf.constant(stream_id, tf.int64)),
                tf.fill([size], number),
                tf.range(size, dtype=tf.int64),
            ],
            axis=1,
        )
        return images, labels, ids

    return dataset.enumerate(start=start_batch).map(add)
