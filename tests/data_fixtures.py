"""Fake CIFAR data for tests: real TFDS builders fed with generated archives, and mock_data.

No network here, so tests prepare ``cifar10``/``cifar100`` with their own TFDS builders from
archives of random images laid out as the real ones; ``tfds.testing.mock_data`` then serves
random examples when given the prepared datasets' metadata (``MockPolicy.USE_FILES``).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_builder

FAKE_CIFAR_TRAIN, FAKE_CIFAR_TEST = 200, 50


def write_fake_cifar(root, name, num_train=FAKE_CIFAR_TRAIN, num_test=FAKE_CIFAR_TEST):
    """Writes CIFAR binary files (random images) under ``root`` laid out as the real archives."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, classes = root / "cifar-10-batches-bin", [10]
        files = {f"data_batch_{i}.bin": num_train // 5 for i in range(1, 6)}
        files["test_batch.bin"] = num_test
        label_files = {"batches.meta.txt": 10}
    else:
        folder, classes = root / "cifar-100-binary", [20, 100]
        files = {"train.bin": num_train, "test.bin": num_test}
        label_files = {"coarse_label_names.txt": 20, "fine_label_names.txt": 100}
    folder.mkdir(parents=True)
    for file_name, count in files.items():
        labels = np.stack([rng.integers(0, c, count) for c in classes], 1).astype(np.uint8)
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        (folder / file_name).write_bytes(np.concatenate([labels, pixels], 1).tobytes())
    for file_name, count in label_files.items():
        (folder / file_name).write_text("\n".join(f"class_{i}" for i in range(count)))


def prepare_fake_cifar(data_dir, scratch_dir, names=("cifar10", "cifar100")):
    """Prepares ``names`` in the TFDS ``data_dir`` with their real builders from fake archives."""
    for name in names:
        source = scratch_dir / f"{name}_source"
        write_fake_cifar(source, name)
        # TFDS 4.9.10 imports ``importlib_resources`` when preparing a dataset; the standard
        # library module has the same ``abc.Traversable`` (kept for installs without it).
        with (
            mock.patch.object(dataset_builder, "importlib_resources", importlib.resources),
            mock.patch.object(
                tfds.download.DownloadManager, "download_and_extract", return_value=str(source)
            ),
        ):
            tfds.builder(name, data_dir=data_dir).download_and_prepare()
    return data_dir


def copy_metadata(prepared_dir, target_dir, name):
    """Copies ``name``'s metadata (no record files) from a prepared data dir to ``target_dir``."""
    (version_dir,) = (prepared_dir / name).iterdir()
    metadata = target_dir / name / version_dir.name
    metadata.mkdir(parents=True)
    for path in version_dir.iterdir():
        if path.suffix in (".json", ".txt"):
            shutil.copy(path, metadata)


@contextlib.contextmanager
def mock_cifar(prepared_dir, target_dir, num_examples=64, names=("cifar10", "cifar100")):
    """``tfds.testing.mock_data`` serving random CIFAR examples from ``target_dir`` (metadata only)."""
    for name in names:
        copy_metadata(prepared_dir, target_dir, name)
    with tfds.testing.mock_data(
        num_examples=num_examples,
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=os.fspath(target_dir),
    ):
        yield target_dir
