"""Run-directory helpers: atomic writes, the output-directory check, checkpoint variable maps.

Shared by the search and training commands (``run_loop``, ``search_loop``, ``train_loop``),
the export (``export``) and the tools. Nothing here knows about a particular task.
"""

from __future__ import annotations

import os

import tensorflow as tf


def write_atomically(path, text):
    """Writes ``text`` to ``path`` so that the file is complete or absent (rename)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def check_root_dir(root_dir):
    """Creates ``root_dir``; ValueError naming it when it is not a writable directory."""
    try:
        os.makedirs(root_dir, exist_ok=True)
        probe = os.path.join(root_dir, f".write_test_{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"root_dir {root_dir!r} is not a writable directory: {error}") from None


def variable_map(variables, prefix=""):
    """``{key: variable}`` with keys from the paths (``prefix/`` removed, duplicates numbered)."""
    result = {}
    for variable in variables:
        key = variable.path
        if prefix and key.startswith(prefix + "/"):
            key = key[len(prefix) + 1 :]
        base, index = key, 1
        while key in result:
            key, index = f"{base}_{index}", index + 1
        result[key] = variable
    return result


def model_checkpoint(model, **extra):
    """A ``tf.train.Checkpoint`` of every variable of ``model`` (plus ``extra`` objects).

    Keras 3 networks that keep layers in Python lists are not fully tracked by
    ``tf.train.Checkpoint(model=model)``; this lists the variables explicitly.
    """
    return tf.train.Checkpoint(model_variables=variable_map(model.variables, model.name), **extra)


def restore_model_variables(model, checkpoint_prefix):
    """Restores ``model``'s variables from a training checkpoint (optimizer state ignored)."""
    status = model_checkpoint(model).restore(checkpoint_prefix)
    status.expect_partial().assert_existing_objects_matched()
