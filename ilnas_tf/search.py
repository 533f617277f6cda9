"""Command line of the architecture search: ``python -m ilnas_tf.search --gin_file=...``.

Current state: the search loop (issue 3: interleaving hypergradient engine; issue 4: data,
checkpoints, TensorBoard) is not written yet. Until then this command builds the experiment's
supernet -- one shared ``Architecture`` and, per learner, a ``SearchEncoder`` and a
``ClassifierHead`` -- runs one forward pass per learner on a random batch, and prints the
summary and parameter counts.

Flags: ``--gin_file`` (repeatable), ``--gin_bindings`` (repeatable), ``--root_dir``.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags, logging

import gin

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin config files (applied in order).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'run_search.layers=5'.")
flags.DEFINE_string("root_dir", os.path.join(os.getcwd(), "runs", "search"), "Output directory.")


@gin.configurable
def run_search(
    root_dir: str,
    channels: int = 16,
    layers: int = 8,
    num_classes=(100, 10),
    image_size: int = 32,
    batch_size: int = 64,
    seed: int = 0,
):
    """Builds the supernet of an experiment and reports it (the search loop comes in issue 3/4).

    Args:
      root_dir: output directory (created).
      channels: initial channels C of the supernet.
      layers: number of search cells.
      num_classes: one class count per learner, in interleaving order.
      image_size: height and width of the input images.
      batch_size: images per forward pass.
      seed: random seed.

    Returns:
      A dict with the parameter counts.
    """
    import keras
    import tensorflow as tf

    from ilnas_tf import search_space

    if not num_classes:
        raise ValueError(f"num_classes must name at least one learner, got {num_classes!r}")
    os.makedirs(root_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    start = time.time()
    architecture = search_space.Architecture(name="architecture")
    images = tf.random.uniform([batch_size, image_size, image_size, 3])
    weights_normal, weights_reduce = architecture(None)
    report = {"architecture_parameters": int(architecture.count_params()), "learners": []}
    for k, classes in enumerate(num_classes):
        encoder = search_space.SearchEncoder(channels, layers, name=f"encoder_{k}")
        head = search_space.ClassifierHead(classes, name=f"head_{k}")
        logits = head(encoder(images, weights_normal, weights_reduce))
        report["learners"].append(
            {
                "classes": int(classes),
                "encoder_parameters": int(encoder.count_params()),
                "head_parameters": int(head.count_params()),
                "logits_shape": tuple(logits.shape),
            }
        )
    print(f"root_dir: {root_dir}")
    print(f"supernet C={channels}, {layers} cells, {image_size}x{image_size} images")
    print(f"architecture parameters (alphas): {report['architecture_parameters']}")
    for k, learner in enumerate(report["learners"]):
        total = learner["encoder_parameters"] + learner["head_parameters"]
        print(
            f"learner {k}: {learner['classes']} classes, encoder {learner['encoder_parameters']:,}"
            f" + head {learner['head_parameters']:,} = {total:,} weights ({total / 1e6:.6f}M),"
            f" logits {learner['logits_shape']}"
        )
    print(f"initial genotype: {architecture.genotype()}")
    print(f"built and ran in {time.time() - start:.1f} s")
    logging.info("report: %s", report)
    return report


def main(argv):
    del argv
    try:
        gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
    except (ValueError, OSError) as error:  # unknown binding, bad value, missing file
        raise app.UsageError(f"bad gin configuration: {error}") from None
    np.set_printoptions(precision=4)
    run_search(root_dir=FLAGS.root_dir)


if __name__ == "__main__":
    app.run(main)
