"""Embedded offline image dataset ``ilnas_synthetic``: a TFDS builder that generates its data.

Importing this module registers the TFDS dataset ``ilnas_synthetic`` with two configs that play
the roles of CIFAR-100 and CIFAR-10 in interleaving learning, offline and in seconds:

- ``ilnas_synthetic/fine``: 10 texture/shape classes (``FINE_CLASS_NAMES``).
- ``ilnas_synthetic/coarse``: 5 classes (``COARSE_CLASS_NAMES``), each the union of two fine
  classes (``FINE_TO_COARSE``), drawn as *different* images (other seeds), as CIFAR-10 and
  CIFAR-100 are different images of related categories.

Each config has the features ``image`` (32x32x3 uint8) and ``label`` (``ClassLabel`` with names),
and the splits ``train`` (5,000 examples) and ``test`` (1,000 examples), classes exactly
balanced. Preparing both configs takes seconds and never downloads anything; use it like any
TFDS dataset::

    from ilnas_tf import synthetic_data

    synthetic_data.prepare(data_dir)  # both configs, offline
    ds = tfds.load("ilnas_synthetic/coarse", split="train", data_dir=data_dir)

The classes differ in what the DARTS candidate operations see differently: texture scale (dense
vs sparse dot lattices, small vs large checkerboards: dilation-like spacing), orientation
(horizontal vs vertical stripes, ``+`` vs ``x``) and shape (circle vs square outline). Colours,
contrast, periods within a class's range, phases, positions, a background illumination ramp and
pixel noise are random, so no single pixel statistic such as the mean colour solves either task.
The tasks are learnable but not trivial: a small CNN learns both well above chance within a few
hundred steps, far from perfectly (measured accuracies: ``docs/benchmarks.md``).

Determinism: example ``i`` of (config, split) is drawn from ``numpy.random.default_rng`` seeded
with ``(_SEED, config index, split index, i)`` and computed with IEEE basic arithmetic only
(``+ - * /``, ``sqrt``, ``floor``, comparisons: no ``sin``/``exp``, whose last bit may differ
between CPUs and math libraries, and no normal sampling), so every machine generates the same
bytes. ``generate_images`` returns them without TFDS.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

IMAGE_SIZE = 32
FINE_CLASS_NAMES = (
    "horizontal_stripes",
    "vertical_stripes",
    "dense_dots",
    "sparse_dots",
    "circle_outline",
    "square_outline",
    "small_checker",
    "large_checker",
    "plus",
    "cross",
)
COARSE_CLASS_NAMES = ("stripes", "dots", "outlines", "checkers", "crosses")
FINE_TO_COARSE = (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)
"""Coarse label of each fine class: the coarse classes are pairs of fine classes."""

SPLIT_SIZES = {"train": 5000, "test": 1000}

# Per-channel mean and std (images scaled to [0, 1]) of each config's train split; the tests
# recompute them.
FINE_MEAN = (0.5035, 0.4933, 0.5008)
FINE_STD = (0.2751, 0.2722, 0.2718)
COARSE_MEAN = (0.4961, 0.4990, 0.4935)
COARSE_STD = (0.2754, 0.2732, 0.2719)

_SEED = 20_240_517
_CONFIG_INDEX = {"fine": 0, "coarse": 1}
_SPLIT_INDEX = {"train": 0, "test": 1}


def _triangle(t):
    """Triangle wave of period 1 with values in [0, 1] (exact arithmetic, no ``sin``)."""
    return np.abs(2.0 * (t - np.floor(t)) - 1.0)


def _soft(distance_inside):
    """Anti-aliased coverage: 1 well inside a shape, 0 well outside (distance in pixels)."""
    return np.clip(distance_inside + 0.5, 0.0, 1.0)


def _pattern(fine_class, rng, x, y):
    """Foreground coverage in [0, 1] of one image of ``fine_class`` on the pixel grid (x, y)."""
    name = FINE_CLASS_NAMES[fine_class]
    if name in ("horizontal_stripes", "vertical_stripes"):
        across, along = (y, x) if name == "horizontal_stripes" else (x, y)
        period = rng.uniform(4.0, 9.0)
        shear = rng.uniform(-0.2, 0.2)
        return _triangle((across + shear * along) / period + rng.uniform())
    if name in ("dense_dots", "sparse_dots"):
        spacing = rng.uniform(3.0, 4.5) if name == "dense_dots" else rng.uniform(6.0, 8.5)
        radius = rng.uniform(0.7, 1.2)
        offset = rng.uniform(0.0, spacing, size=2)
        dx = np.mod(x - offset[0], spacing)
        dy = np.mod(y - offset[1], spacing)
        dx = np.minimum(dx, spacing - dx)
        dy = np.minimum(dy, spacing - dy)
        return _soft(radius - np.sqrt(dx * dx + dy * dy))
    if name in ("circle_outline", "square_outline", "plus", "cross"):
        center = rng.uniform(9.0, 23.0, size=2)
        size = rng.uniform(5.5, 10.0)
        thickness = rng.uniform(1.2, 2.2)
        dx, dy = x - center[0], y - center[1]
        if name == "circle_outline":
            return _soft(thickness / 2 - np.abs(np.sqrt(dx * dx + dy * dy) - size))
        if name == "square_outline":
            return _soft(thickness / 2 - np.abs(np.maximum(np.abs(dx), np.abs(dy)) - size))
        if name == "cross":
            dx, dy = (dx + dy) / np.sqrt(2.0), (dx - dy) / np.sqrt(2.0)
        bar_x = np.minimum(thickness / 2 - np.abs(dy), size - np.abs(dx))
        bar_y = np.minimum(thickness / 2 - np.abs(dx), size - np.abs(dy))
        return _soft(np.maximum(bar_x, bar_y))
    # small_checker / large_checker
    cell = rng.uniform(2.0, 3.5) if name == "small_checker" else rng.uniform(5.0, 8.0)
    offset = rng.uniform(0.0, 2.0 * cell, size=2)
    parity = np.floor((x + offset[0]) / cell) + np.floor((y + offset[1]) / cell)
    return np.mod(parity, 2.0)


def generate_image(fine_class, rng):
    """Returns one 32x32x3 uint8 image of ``fine_class`` drawn with ``rng``."""
    grid = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
    x, y = np.meshgrid(grid, grid)  # x varies along columns, y along rows
    coverage = _pattern(fine_class, rng, x, y)[..., None]
    background = rng.uniform(0.0, 1.0, size=3)
    foreground = rng.uniform(0.0, 1.0, size=3)
    contrast = rng.uniform(0.6, 1.0)
    foreground = background + contrast * (foreground - background)
    image = background + coverage * (foreground - background)
    # Illumination ramp in a random direction and pixel noise (sum of uniforms ~ Gaussian).
    ramp = rng.uniform(-1.0, 1.0, size=2) * (0.25 / IMAGE_SIZE)
    image = image + ((x - IMAGE_SIZE / 2) * ramp[0] + (y - IMAGE_SIZE / 2) * ramp[1])[..., None]
    noise_scale = rng.uniform(0.02, 0.06)
    noise = rng.uniform(-1.0, 1.0, size=(3,) + image.shape).sum(axis=0) / np.sqrt(3.0)
    image = image + noise_scale * noise
    return np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def example_label_and_class(config_name, index):
    """Returns ``(label, fine_class)`` of example ``index`` (exactly balanced classes)."""
    if config_name == "fine":
        label = index % len(FINE_CLASS_NAMES)
        return label, label
    label = index % len(COARSE_CLASS_NAMES)
    members = [f for f, c in enumerate(FINE_TO_COARSE) if c == label]
    return label, members[(index // len(COARSE_CLASS_NAMES)) % len(members)]


def generate_example(config_name, split, index):
    """Returns ``(image, label, fine_class)`` of example ``index`` of (config, split)."""
    if config_name not in _CONFIG_INDEX:
        raise ValueError(f"unknown config {config_name!r}; known: {sorted(_CONFIG_INDEX)}")
    if split not in _SPLIT_INDEX:
        raise ValueError(f"unknown split {split!r}; known: {sorted(_SPLIT_INDEX)}")
    rng = np.random.default_rng([_SEED, _CONFIG_INDEX[config_name], _SPLIT_INDEX[split], index])
    label, fine_class = example_label_and_class(config_name, index)
    return generate_image(fine_class, rng), label, fine_class


def generate_images(config_name, split, num_examples=None):
    """Returns ``(images [N, 32, 32, 3] uint8, labels [N] int64)`` in generation order.

    Args:
      config_name: ``"fine"`` or ``"coarse"``.
      split: ``"train"`` or ``"test"``.
      num_examples: the first ``num_examples`` examples (default: the whole split).
    """
    if num_examples is None:
        num_examples = SPLIT_SIZES[split]
    examples = [generate_example(config_name, split, i) for i in range(num_examples)]
    images = np.stack([e[0] for e in examples]) if examples else np.zeros((0, 32, 32, 3), np.uint8)
    return images, np.array([e[1] for e in examples], dtype=np.int64)


def channel_statistics(images):
    """Per-channel mean and std of uint8 images scaled to [0, 1], as float tuples."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in pixels.mean(0)), tuple(float(v) for v in pixels.std(0))


@dataclasses.dataclass
class IlnasSyntheticConfig(tfds.core.BuilderConfig):
    """Config of ``ilnas_synthetic``: ``class_names`` are the label names."""

    class_names: tuple[str, ...] = ()


class IlnasSynthetic(tfds.core.GeneratorBasedBuilder):
    """Generated texture/shape images: ``fine`` (10 classes) and ``coarse`` (5 classes).

    Args:
      train_size, test_size: smaller split sizes, for tests only (default ``SPLIT_SIZES``).
      **kwargs: ``tfds.core.DatasetBuilder`` arguments (``config``, ``data_dir``, ...).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9.10 finds a builder's source through ``importlib_resources``, which it only
    # installs for Python < 3.9; naming the file here skips that lookup.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [
        IlnasSyntheticConfig(
            name="fine",
            description="10 fine classes (the CIFAR-100 role).",
            class_names=FINE_CLASS_NAMES,
        ),
        IlnasSyntheticConfig(
            name="coarse",
            description="5 coarse classes, pairs of fine classes (the CIFAR-10 role).",
            class_names=COARSE_CLASS_NAMES,
        ),
    ]

    def __init__(self, *, train_size=None, test_size=None, **kwargs):
        self._split_sizes = {
            "train": SPLIT_SIZES["train"] if train_size is None else int(train_size),
            "test": SPLIT_SIZES["test"] if test_size is None else int(test_size),
        }
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(split, n) for split, n in self._split_sizes.items()}

    def _generate_examples(self, split, num_examples):
        for index in range(num_examples):
            image, label, _ = generate_example(self.builder_config.name, split, index)
            yield index, {"image": image, "label": label}


CONFIG_NAMES = tuple(config.name for config in IlnasSynthetic.BUILDER_CONFIGS)
DATASET_NAMES = tuple(f"ilnas_synthetic/{name}" for name in CONFIG_NAMES)


def prepare(data_dir=None, configs=CONFIG_NAMES, train_size=None, test_size=None):
    """Generates and writes the configs into a TFDS data dir (offline; no-op where prepared).

    Args:
      data_dir: TFDS data dir (default: TFDS' default, ``~/tensorflow_datasets``).
      configs: config names to prepare.
      train_size, test_size: smaller split sizes, for tests only (the written dataset info
        records them, so readers see the small splits).

    Returns:
      The prepared builders, in ``configs`` order.
    """
    builders = []
    for name in configs:
        if name not in CONFIG_NAMES:
            raise ValueError(f"unknown ilnas_synthetic config {name!r}; known: {CONFIG_NAMES}")
        builder = IlnasSynthetic(
            config=name, data_dir=data_dir, train_size=train_size, test_size=test_size
        )
        builder.download_and_prepare()
        builders.append(builder)
    return builders
