"""Draws a genotype's normal and reduction cells (Graphviz), as DARTS' ``visualize.py``.

  python tools/plot_genotype.py --genotype=runs/demo --output_dir=runs/demo/plots
  python tools/plot_genotype.py --genotype=DARTS_V2 --formats=png,pdf

``--genotype``: a published name, a genotype JSON file, a search ``root_dir`` or genotype
text. Always writes ``<name>_normal.dot`` and ``<name>_reduce.dot``; renders each to the
``--formats`` (png, pdf, svg) when the Graphviz ``dot`` binary is on PATH, and otherwise says so
(and how to render the .dot files later) without failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from absl import app, flags

from ilnas_tf import genotype as genotype_lib

FORMATS = ("png", "pdf", "svg")
flags.DEFINE_string("genotype", None, "Name, genotype JSON file, search root_dir or text.")
flags.DEFINE_string("output_dir", ".", "Where to write the files.")
flags.DEFINE_string("name", "genotype", "File name stem.")
flags.DEFINE_list("formats", ["png", "pdf"], f"Rendered formats, among {FORMATS}.")
FLAGS = flags.FLAGS


def plot(genotype, output_dir, name="genotype", formats=("png", "pdf")):
    """Writes the dot files and, with Graphviz, the rendered files; returns every path written.

    Raises:
        ValueError: on an unknown format or a genotype ``load_genotype`` rejects.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}; expected some of {FORMATS}")
    genotype = genotype_lib.load_genotype(genotype)
    os.makedirs(output_dir, exist_ok=True)
    dot_binary = shutil.which("dot")
    written = []
    for cell in genotype_lib.CELL_NAMES:
        dot_path = os.path.join(output_dir, f"{name}_{cell}.dot")
        with open(dot_path, "w") as handle:
            handle.write(genotype_lib.to_dot(genotype, cell))
        written.append(dot_path)
        for fmt in formats if dot_binary else ():
            out = os.path.join(output_dir, f"{name}_{cell}.{fmt}")
            subprocess.run([dot_binary, f"-T{fmt}", dot_path, "-o", out], check=True)
            written.append(out)
    if formats and not dot_binary:
        print(
            "note: Graphviz 'dot' is not on PATH, so only the .dot files were written; install "
            "Graphviz (e.g. apt-get install graphviz) and rerun, or render them with "
            "'dot -Tpng FILE.dot -o FILE.png'",
            file=sys.stderr,
        )
    return written


def main(argv):
    del argv
    if not FLAGS.genotype:
        sys.exit("plot_genotype: --genotype is required (name, JSON file, search root_dir, text)")
    try:
        paths = plot(FLAGS.genotype, FLAGS.output_dir, FLAGS.name, FLAGS.formats)
    except (ValueError, subprocess.CalledProcessError) as error:
        sys.exit(f"plot_genotype: error: {error}")
    for path in paths:
        print(path)


if __name__ == "__main__":
    app.run(main)
