"""Exports a training run's checkpoint: a SavedModel for serving and the ``.keras`` file.

  python tools/export_model.py --root_dir=runs/train_demo
  python tools/export_model.py --root_dir=runs/train_demo \
      --checkpoint=runs/train_demo/checkpoints/ckpt-40 --output_dir=/tmp/export_40

Default: the latest checkpoint, into ``<root_dir>/export``. The SavedModel's signature is
described in ``ilnas_tf/export.py`` and the README.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

flags.DEFINE_string("root_dir", None, "Training run directory (model.json, checkpoints/).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest).")
flags.DEFINE_string("output_dir", None, "Output directory (default: <root_dir>/export).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from ilnas_tf import export

    if not FLAGS.root_dir:
        sys.exit("export_model: --root_dir is required (a training run directory)")
    if FLAGS.checkpoint and not os.path.exists(f"{FLAGS.checkpoint}.index"):
        sys.exit(f"export_model: error: checkpoint {FLAGS.checkpoint!r} not found (no .index)")
    try:
        paths = export.export_run(FLAGS.root_dir, FLAGS.checkpoint, FLAGS.output_dir)
    except export.ExportError as error:
        sys.exit(f"export_model: error: {error}")
    print(f"exported {paths['checkpoint']}:\n  {paths['saved_model']}\n  {paths['keras']}")


if __name__ == "__main__":
    app.run(main)
