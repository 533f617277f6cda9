"""Shared command-line pieces of ``ilnas_tf.search`` and ``ilnas_tf.train``.

Both commands take the same flags (defined once here, so that both modules can be imported in
one process): ``--gin_file`` (repeatable, applied in order), ``--gin_bindings`` (repeatable),
``--root_dir`` (each command has its own default) and ``--strategy``.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

import gin

FLAGS = flags.FLAGS
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_multi_string("gin_file", [], "Gin config files (applied in order).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'run_search.epochs=2'.")
flags.DEFINE_string("root_dir", None, "Output directory (default: ./runs/<command>).")
flags.DEFINE_enum(
    "strategy",
    None,
    ["default", "mirrored", "multi_worker"],
    "Distribution strategy (overrides the gin value): one device, all local GPUs, or "
    "MultiWorkerMirroredStrategy from TF_CONFIG.",
)


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


def setup(command, default_gin_files):
    """Quiet logging, no TFDS progress bars, gin parsed from the flags (exit 1 if bad).

    Returns:
        ``(root_dir, overrides)``: the output directory (``./runs/<command>`` by default) and
        the keyword overrides from ``--strategy``.
    """
    import tensorflow_datasets as tfds

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep TFDS' INFO lines out of the console
    tfds.disable_progress_bar()
    gin.add_config_file_search_path(REPO_ROOT)  # "include 'gin/...'" from any directory
    try:
        gin.parse_config_files_and_bindings(
            FLAGS.gin_file or list(default_gin_files), FLAGS.gin_bindings
        )
    except (ValueError, OSError, ImportError) as error:  # unknown binding, bad value, no file
        sys.exit(f"ilnas_tf.{command}: bad gin configuration: {error}")
    root_dir = FLAGS.root_dir or os.path.join(os.getcwd(), "runs", command)
    overrides = {"strategy": FLAGS.strategy} if FLAGS.strategy else {}
    return root_dir, overrides


def exit_after_success():
    """Flushes every output and exits 0 without the interpreter's teardown.

    With several replicas, TF 2.21 can stall for minutes destroying distributed input
    iterators at exit; every output is already written and closed here.
    """
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
