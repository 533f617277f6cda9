"""``pip install -e .`` in a fresh virtualenv gives working ``ilnas-search`` / ``ilnas-train``.

Offline: the fresh venv (``python -m venv``, its own pip) sees the project venv's installed
packages through a ``.pth`` file (TensorFlow, setuptools, ...), so the editable install needs
no index and no build isolation; the console scripts then import this clone's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from search_fixtures import ENV, ROOT


def test_editable_install_gives_working_console_scripts(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    project_site = sysconfig.get_paths()["purelib"]  # this (project) venv's packages
    with open(os.path.join(purelib, "project_venv.pth"), "w") as handle:
        handle.write(project_site + "\n")
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"
    install = subprocess.run(
        [venv / "bin" / "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "-e", ROOT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    for script, flags in (
        ("ilnas-search", ("--gin_file", "--gin_bindings", "--root_dir", "--strategy")),
        ("ilnas-train", ("--genotype", "--gin_file", "--root_dir", "--strategy")),
    ):
        result = subprocess.run(
            [venv / "bin" / script, "--help"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        text = result.stdout + result.stderr
        assert result.returncode in (0, 1), text[-3000:]  # absl's --help exits 1
        assert "Traceback" not in text, text[-3000:]
        for flag in flags:
            assert f"{flag}:" in text, (script, flag, text[-3000:])
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import ilnas_tf, ilnas_tf.cli as c; print(c.REPO_ROOT)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.stdout.strip() == ROOT, where.stderr[-3000:]
    assert os.path.isfile(os.path.join(where.stdout.strip(), "gin", "demo.gin"))
