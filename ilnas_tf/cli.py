"""The command-line main shared by ``ilnas_tf.search`` and ``ilnas_tf.train``.

Both commands take the same flags (defined once here, so that both modules can be imported in
one process): ``--gin_file`` (repeatable, applied in order), ``--gin_bindings`` (repeatable),
``--root_dir`` (each command has its own default), ``--strategy``, and ``--fresh_start`` /
``--force_resume`` (what to do with a ``root_dir`` holding a run with other settings; see
``run_dir``). ``run`` is the whole main: a first line at once, gin parsed from the flags (each
file and binding on its own, so that an error names its source), the command's run function,
one-line ``ilnas_tf.<command>: error: ...`` messages with exit status 1, one line
``ilnas_tf.<command>: interrupted at step N; rerun the same command to resume`` on SIGTERM /
SIGINT (exit status 128 + the signal; ``preemption``), and an exit that skips the
interpreter's teardown after success.

Default gin files are found relative to the repository root (``REPO_ROOT``), which is where
an editable install (``pip install -e .``) imports the package from; with any other install
pass ``--gin_file``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from absl import app, flags, logging

import gin
from ilnas_tf import preemption

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
flags.DEFINE_bool(
    "fresh_start",
    False,
    "Delete the run outputs in --root_dir (checkpoints, summaries, results, ...) and start a "
    "new run there.",
)
flags.DEFINE_bool(
    "force_resume",
    False,
    "Resume the run in --root_dir even though its defining settings differ from the recorded "
    "ones (the change is recorded in run.json).",
)

# Raised by both runs for missing data and diverging losses (and ValueError for bad inputs):
# one line, exit 1. ``module:Class`` names, imported once the run starts.
ERRORS = ("ilnas_tf.data:DatasetUnavailableError", "ilnas_tf.run_loop:NonFiniteLossError")


def _resolve(name):
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def setup(command, default_gin_files, configurables=()):
    """Quiet logging, no TFDS progress bars, gin parsed from the flags (exit 1 if bad).

    Args:
      command: ``"search"`` or ``"train"`` (messages, the default root_dir).
      default_gin_files: gin files read without ``--gin_file``.
      configurables: modules to import first (they register gin configurables such as
        ``engine.InterleavingConfig``).

    Returns:
      ``(root_dir, overrides)``: the output directory (``./runs/<command>`` by default) and
      the keyword overrides from ``--strategy``.
    """
    import tensorflow_datasets as tfds

    for module in configurables:
        importlib.import_module(module)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep TFDS' INFO lines out of the console
    tfds.disable_progress_bar()
    gin.add_config_file_search_path(REPO_ROOT)  # "include 'gin/...'" from any directory
    parse_gin(command, FLAGS.gin_file or list(default_gin_files), FLAGS.gin_bindings)
    root_dir = FLAGS.root_dir or os.path.join(os.getcwd(), "runs", command)
    if not root_dir.strip():
        sys.exit(f"ilnas_tf.{command}: error: --root_dir='' is invalid: expected a directory")
    overrides = {"strategy": FLAGS.strategy} if FLAGS.strategy else {}
    for name in ("fresh_start", "force_resume"):
        if FLAGS[name].value:
            overrides[name] = True
    if FLAGS.fresh_start and FLAGS.force_resume:
        sys.exit(f"ilnas_tf.{command}: error: pass --fresh_start or --force_resume, not both")
    return root_dir, overrides


def one_line(text):
    """``text`` as one line: gin's "In call to configurable ..." suffix removed, every run of
    whitespace (newlines included) made one space."""
    text = re.sub(r"\s*In call to configurable '[^']*' \(<[^>]*>\)", "", str(text))
    return " ".join(text.split())


def gin_error(files, bindings, file_source="--gin_file={!r}", binding_source="--gin_bindings={!r}"):
    """Parses each gin file, then each binding; the first failure as one line ``bad gin
    configuration in <source>: <error>`` (``None`` when all parse).

    Any exception of gin's parser counts (``ValueError`` for unknown names,
    ``SyntaxError`` and ``tokenize.TokenError`` for bad syntax, ``OSError`` and
    ``UnicodeDecodeError`` for unreadable files, ``ImportError``).
    """
    sources = [(file_source.format(path), gin.parse_config_file, path) for path in files]
    sources += [(binding_source.format(text), gin.parse_config, text) for text in bindings]
    for source, parse, value in sources:
        try:
            parse(value)
        except Exception as error:  # noqa: BLE001 (every parse failure: one line)
            return f"bad gin configuration in {source}: {type(error).__name__}: {one_line(error)}"
    return None


def parse_gin(command, files, bindings):
    """Parses each gin file, then each binding (``gin_error``); exits with one line naming the
    bad source."""
    error = gin_error(files, bindings)
    if error:
        sys.exit(f"ilnas_tf.{command}: {error}")
    gin.finalize()


def run(command, run_fn, default_gin_files, errors=ERRORS, configurables=(), overrides=None):
    """The main of a command: ``run_fn(root_dir=..., **overrides)`` configured by the flags.

    Args:
      command: ``"search"`` or ``"train"``.
      run_fn: the gin-configurable run function (``search.run_search``).
      default_gin_files: gin files read without ``--gin_file``.
      errors: ``module:Class`` names of the exceptions reported as one line with exit status
        1 (``ValueError`` always is).
      configurables: modules registering the gin configurables the files bind.
      overrides: keyword arguments from command-specific flags (``--genotype``).
    """
    preemption.install()
    try:
        print(f"ilnas_tf.{command}: starting (loading TensorFlow) ...", flush=True)
        root_dir, flag_overrides = setup(command, default_gin_files, configurables)
        errors = (ValueError, *(_resolve(name) for name in errors))
        try:
            run_fn(root_dir=root_dir, **flag_overrides, **(overrides or {}))
        except errors as error:
            sys.exit(f"ilnas_tf.{command}: error: {one_line(error)}")
    except (preemption.Interrupted, KeyboardInterrupt) as error:
        message = error if isinstance(error, preemption.Interrupted) else "interrupted"
        code = getattr(error, "exit_code", 130)
        print(f"ilnas_tf.{command}: {one_line(message)}", file=sys.stderr, flush=True)
        exit_now(code)
    exit_now(0)


def console_main(main, module):
    """Runs ``main`` with absl, as a console script (``ilnas-search``) or ``python -m``.

    A console script's ``__main__`` is the generated wrapper: absl's ``--help`` would show
    neither ``module``'s docstring nor its flags, so both are lent to the wrapper first.
    """
    wrapper = sys.modules["__main__"]
    if wrapper is not module:
        for flag in FLAGS.get_key_flags_for_module(module.__name__):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
        wrapper.__doc__ = module.__doc__
    app.run(main)


def remove_autograph_files():
    """Deletes the ``__autograph_generated_file*.py`` modules of this process.

    TensorFlow's autograph writes each converted function to the temp dir and removes the
    files in an ``atexit`` handler, which ``os._exit`` skips.
    """
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith("__autograph_generated_file") and path:
            try:
                os.remove(path)
            except OSError:
                pass


def exit_now(code=0):
    """Flushes every output and exits with ``code`` without the interpreter's teardown.

    With several replicas, TF 2.21 can stall for minutes destroying distributed input
    iterators at exit; every output is already written and closed here.
    """
    remove_autograph_files()
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
