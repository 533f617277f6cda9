"""Runs an exported SavedModel on image files, safely: ``python tools/predict.py``.

    python tools/predict.py --saved_model=runs/train_demo/export/saved_model \\
        --images=images.npy [--images=cat.png ...] [--output=predictions.npz]

Each ``--images`` is a PNG file (one RGB or greyscale image) or a ``.npy`` file (one image
``[H, W, 3]`` or a batch ``[N, H, W, 3]``). Inputs are read without running code from them and
without silent conversions:

* ``.npy`` files are loaded with ``allow_pickle=False`` (a ``.npy`` file holding Python
  objects is rejected: unpickling one can execute arbitrary code, which ``saved_model_cli run
  --inputs`` allows);
* the pixels must already be ``uint8``: float or wider integer arrays are rejected instead of
  being cast (a cast turns 0.5 into 0 and 300 into 44).

Prints the top class and its probability per image; ``--output`` also saves the
``probabilities`` and ``logits`` arrays (``.npz``). Needs only TensorFlow and NumPy.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

flags.DEFINE_string("saved_model", None, "The exported SavedModel directory.")
flags.DEFINE_multi_string("images", [], "PNG or .npy files of uint8 RGB images.")
flags.DEFINE_string("output", None, "Optional .npz file for the probabilities and logits.")
FLAGS = flags.FLAGS


class InputError(ValueError):
    """An input file that cannot be served as uint8 RGB images."""


def load_images(path):
    """``[N, H, W, 3]`` uint8 images from a PNG or ``.npy`` file; InputError otherwise."""
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:  # object arrays need pickle: refused
            raise InputError(f"{path}: not a plain numeric .npy array ({error})") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error})") from None
    elif path.lower().endswith(".png"):
        import tensorflow as tf

        try:
            data = tf.io.read_file(path)
            array = tf.io.decode_png(data, channels=3, dtype=tf.uint8).numpy()
        except tf.errors.OpError as error:
            raise InputError(f"{path}: not a readable PNG ({error.message})") from None
    else:
        raise InputError(f"{path}: expected a .png or .npy file")
    if array.dtype != np.uint8:
        raise InputError(
            f"{path}: pixels of dtype {array.dtype}, expected uint8 (0..255); convert "
            "explicitly, e.g. np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for [0, 1] floats"
        )
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(f"{path}: shape {array.shape}, expected [H, W, 3] or [N, H, W, 3]")
    return array


def main(argv):
    del argv
    if not FLAGS.saved_model or not FLAGS.images:
        sys.exit("predict: error: pass --saved_model and at least one --images")
    try:
        images = [load_images(path) for path in FLAGS.images]
    except InputError as error:
        sys.exit(f"predict: error: {error}")
    import tensorflow as tf

    serve = tf.saved_model.load(FLAGS.saved_model).signatures["serving_default"]
    probabilities, logits = [], []
    for path, batch in zip(FLAGS.images, images):
        try:
            outputs = serve(images=tf.constant(batch))
        except tf.errors.InvalidArgumentError as error:
            sys.exit(f"predict: error: {path}: {' '.join(error.message.split())}")
        probabilities.append(outputs["probabilities"].numpy())
        logits.append(outputs["logits"].numpy())
        for index, row in enumerate(probabilities[-1]):
            print(f"{path}[{index}]: class {int(np.argmax(row))} (p={float(np.max(row)):.3f})")
    if FLAGS.output:
        np.savez(
            FLAGS.output,
            probabilities=np.concatenate(probabilities),
            logits=np.concatenate(logits),
        )


if __name__ == "__main__":
    app.run(main)
