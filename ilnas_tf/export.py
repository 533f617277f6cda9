"""Export of trained networks: a SavedModel for serving and the ``.keras`` file.

The SavedModel (``<root_dir>/export/saved_model``) needs no project code to load and run
(``tf.saved_model.load``, ``saved_model_cli``, TF Serving). Its ``serving_default`` signature:

    input   images          uint8    [batch, H, W, 3]   RGB pixels, any batch size (H, W: the
                                                        training image size, e.g. 32 x 32)
    output  probabilities   float32  [batch, classes]   softmax of the logits
    output  logits          float32  [batch, classes]

Preprocessing (``(pixels / 255 - mean) / std`` with the dataset's per-channel statistics) is
inside the graph. Images of another height, width or channel count fail with an
``InvalidArgumentError`` whose message names the expected and the received shape. The network
runs in inference mode (BN moving statistics, no drop path, no auxiliary head) in float32,
whatever precision it was trained in.

``<root_dir>/export/model.keras`` is the Keras model (``keras.saving.load_model``; needs
``ilnas_tf`` imported for the custom layers). Exports are written to a temporary name and
renamed: an export is complete or absent.

``export_run`` exports a training run's checkpoint (the training command calls it at the end;
``tools/export_model.py`` exports any checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from ilnas_tf import data, network, run_dir  # noqa: F401  (network: the Keras classes)

SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "images"
SERVING_OUTPUTS = ("probabilities", "logits")
MODEL_FILE = "model.json"


class ExportError(RuntimeError):
    """A run cannot be exported (no model description or no checkpoint)."""


def write_model_description(root_dir, model, dataset, image_shape):
    """Writes ``root_dir/model.json``: everything ``export_run`` needs to rebuild the network.

    Args:
        root_dir: the training run's directory.
        model: the (built) training network.
        dataset: ``data.DATASETS`` name (its mean/std become the serving preprocessing).
        image_shape: ``(height, width, 3)`` of the training images.
    """
    spec = data.get_spec(dataset)
    description = {
        "model": keras.saving.serialize_keras_object(model),
        "dataset": spec.name,
        "num_classes": spec.num_classes,
        "image_shape": [int(d) for d in image_shape],
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    run_dir.write_atomically(os.path.join(root_dir, MODEL_FILE), json.dumps(description, indent=2))


def read_model_description(root_dir):
    """The dict written by ``write_model_description``; ExportError if there is none."""
    path = os.path.join(root_dir, MODEL_FILE)
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ExportError(
            f"{path} not found: {root_dir!r} is not a training run directory of "
            "ilnas_tf.train (it writes model.json at start)"
        ) from None


def build_inference_model(description):
    """A fresh float32 network as described (weights not restored), built for the images."""
    serialized = json.loads(json.dumps(description["model"]))  # a deep copy
    serialized["config"]["dtype"] = "float32"
    model = keras.saving.deserialize_keras_object(serialized)  # built from its build config
    if not model.built:
        model.build((None, *description["image_shape"]))
    return model


def preprocess(images, mean, std):
    """uint8 ``[B, H, W, C]`` pixels -> normalised float32, as the training pipeline does."""
    return data.standardize(tf.cast(images, tf.float32) / 255.0, mean, std)


def _checked_images(images, image_shape):
    """``images`` with a static ``[None, H, W, C]`` shape after a run-time check of it."""
    expected = tf.constant(image_shape, tf.int32)
    shape = tf.shape(images)
    padded = tf.pad(shape, [[0, 4]])  # so that slicing works whatever the rank
    matches = tf.logical_and(
        tf.equal(tf.size(shape), 4), tf.reduce_all(tf.equal(padded[1:4], expected))
    )
    check = tf.debugging.Assert(
        matches,
        [
            f"serving_default expects uint8 images of shape [batch, {image_shape[0]}, "
            f"{image_shape[1]}, {image_shape[2]}]; received shape:",
            shape,
        ],
        summarize=8,
    )
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None, *image_shape])


def serving_archive(model, image_shape, mean, std):
    """A ``keras.export.ExportArchive`` with the ``serving_default`` endpoint of ``model``."""
    image_shape = [int(d) for d in image_shape]

    def serve(images):
        pixels = _checked_images(images, image_shape)
        logits = tf.cast(model(preprocess(pixels, mean, std), training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits), "logits": logits}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name=SERVING_INPUT)],
    )
    return archive


def _replace_directory(temporary, path):
    """Moves the complete ``temporary`` directory to ``path`` (replacing it)."""
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(temporary, path)
    shutil.rmtree(old, ignore_errors=True)


def export_saved_model(model, path, image_shape, mean, std):
    """Writes the serving SavedModel of ``model`` to the directory ``path`` (atomically)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    serving_archive(model, image_shape, mean, std).write_out(temporary, verbose=False)
    _replace_directory(temporary, path)
    return path


def export_keras(model, path):
    """Writes ``model`` as a ``.keras`` file at ``path`` (atomically)."""
    stem, extension = os.path.splitext(path)
    if extension != ".keras":
        raise ValueError(f"the Keras model file must end in .keras, got {path!r}")
    temporary = f"{stem}.tmp-{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, path)
    return path


def export_run(root_dir, checkpoint=None, output_dir=None):
    """Exports a training run: the SavedModel and the ``.keras`` file.

    Args:
        root_dir: the training run's directory (``model.json``, ``checkpoints/``).
        checkpoint: checkpoint prefix (default: the latest in ``root_dir/checkpoints``).
        output_dir: where to write (default ``root_dir/export``).

    Returns:
        ``{"saved_model": path, "keras": path, "checkpoint": prefix}``.

    Raises:
        ExportError: without ``model.json`` or without a checkpoint.
    """
    description = read_model_description(root_dir)
    checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(root_dir, "checkpoints"))
    if not checkpoint:
        raise ExportError(f"no checkpoint in {os.path.join(root_dir, 'checkpoints')!r} to export")
    model = build_inference_model(description)
    run_dir.restore_model_variables(model, checkpoint)
    output_dir = output_dir or os.path.join(root_dir, "export")
    os.makedirs(output_dir, exist_ok=True)
    shape, mean, std = description["image_shape"], description["mean"], description["std"]
    saved_model = export_saved_model(
        model, os.path.join(output_dir, "saved_model"), shape, mean, std
    )
    keras_file = export_keras(model, os.path.join(output_dir, "model.keras"))
    return {"saved_model": saved_model, "keras": keras_file, "checkpoint": checkpoint}
