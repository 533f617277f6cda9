"""What a benchmark ran on, from the standard library only (shared by the TensorFlow and the
PyTorch benchmark tools, which run in different virtualenvs).
"""

from __future__ import annotations

import platform


def read_text(path, default=None):
    """A small system file's stripped text, or ``default`` if it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def cpu_model():
    """The CPU model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    for line in (read_text("/proc/cpuinfo", "") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
