"""tools/plot_genotype.py: dot text always, rendered files when Graphviz is there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ilnas_tf import genotype as genotype_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "plot_genotype.py")
FAKE_DOT = """#!/bin/sh
# Fake Graphviz: records its arguments in the output file named after -o.
while [ "$#" -gt 0 ]; do
  if [ "$1" = "-o" ]; then out="$2"; fi
  all="$all $1"; shift
done
echo "fake dot:$all" > "$out"
"""


def plot(tmp_path, *args, path_dirs=()):
    env = {**os.environ, "PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, TOOL, f"--output_dir={tmp_path / 'out'}", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_without_graphviz_writes_dot_files_and_says_so(tmp_path):
    if any(os.access(os.path.join(d, "dot"), os.X_OK) for d in ("/usr/bin", "/bin")):
        pytest.skip("Graphviz is installed system-wide here (the fake-dot test covers rendering)")
    result = plot(tmp_path, "--genotype=DARTS_V2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Graphviz 'dot' is not on PATH" in result.stderr
    for cell in ("normal", "reduce"):
        text = (tmp_path / "out" / f"genotype_{cell}.dot").read_text()
        assert text == genotype_lib.to_dot(genotype_lib.DARTS_V2, cell)
    assert sorted(os.listdir(tmp_path / "out")) == ["genotype_normal.dot", "genotype_reduce.dot"]


def test_with_graphviz_renders_every_format(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dot").write_text(FAKE_DOT)
    (bin_dir / "dot").chmod(0o755)
    genotype_file = tmp_path / "g.json"
    genotype_file.write_text(genotype_lib.PC_DARTS.to_json())
    result = plot(
        tmp_path, f"--genotype={genotype_file}", "--formats=png,svg", "--name=pc",
        path_dirs=[bin_dir],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not on PATH" not in result.stderr
    for cell in ("normal", "reduce"):
        dot_file = tmp_path / "out" / f"pc_{cell}.dot"
        assert dot_file.read_text() == genotype_lib.to_dot(genotype_lib.PC_DARTS, cell)
        for fmt in ("png", "svg"):
            rendered = (tmp_path / "out" / f"pc_{cell}.{fmt}").read_text()
            assert rendered.startswith(f"fake dot: -T{fmt} {dot_file}"), rendered


def test_bad_genotype_and_format_are_named(tmp_path):
    result = plot(tmp_path, "--genotype=NOPE")
    assert result.returncode != 0 and "plot_genotype: error:" in result.stderr
    assert "'NOPE'" in result.stderr and "Traceback" not in result.stderr
    result = plot(tmp_path, "--genotype=DARTS_V2", "--formats=gif")
    assert result.returncode != 0 and "unknown formats ['gif']" in result.stderr
