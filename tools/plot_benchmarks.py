"""Plots search-benchmark rows against K*M: iteration, architecture step and compile time, RSS.

  python tools/plot_benchmarks.py scaling.jsonl docs/km_scaling.png

Reads the JSON lines of ``tools/benchmark_search.py`` (e.g. from ``tools/benchmark_scaling.sh``;
``failed`` lines are skipped), groups them by everything but K and M, and draws one line per
group against the number of stages K*M, with the least-squares line through the origin of the
architecture step as a linearity reference. Prints the per-stage slope of each group.
Needs matplotlib (not a project requirement: ``pip install matplotlib``).
"""

from __future__ import annotations

import json
import sys

GROUP_KEYS = ("channels", "layers", "batch", "mode", "exact_method", "recompute")


def read_rows(path):
    """The benchmark rows of a JSON-lines file (failed runs skipped)."""
    rows = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if "failed" in row or "killed" in row:
                continue
            rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no benchmark rows (only failed runs or an empty file)")
    return rows


def groups(rows):
    """``{label: rows sorted by K*M}``."""
    result = {}
    for row in rows:
        label = ", ".join(f"{k}={row[k]}" for k in GROUP_KEYS if row.get(k) is not None)
        result.setdefault(label, []).append(row)
    return {k: sorted(v, key=lambda r: r["learners"] * r["rounds"]) for k, v in result.items()}


def per_stage_slope(rows, key="arch_step_s"):
    """Least-squares slope through the origin of ``key`` against K*M."""
    stages = [r["learners"] * r["rounds"] for r in rows]
    values = [r[key] for r in rows]
    return sum(s * v for s, v in zip(stages, values)) / sum(s * s for s in stages)


def plot(rows, path):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_benchmarks.py needs matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("arch_step_s", "architecture step (s)"),
        ("iteration_s", "iteration (s)"),
        ("compile_s", "start to end of first iteration (s)"),
        ("peak_rss_gib", "peak RSS (GiB)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for label, members in groups(rows).items():
        stages = [r["learners"] * r["rounds"] for r in members]
        for axis, (key, title) in zip(axes, panels):
            axis.plot(stages, [r[key] for r in members], "o-", label=label)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("stages K*M")
        slope = per_stage_slope(members)
        axes[0].plot(
            [0, max(stages)], [0, slope * max(stages)], ":", color="gray", label="linear fit"
        )
        print(f"{label}: {slope:.3f} s per stage (architecture step)")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv):
    if len(argv) != 3:
        raise SystemExit("usage: python tools/plot_benchmarks.py ROWS.jsonl OUT.png")
    plot(read_rows(argv[1]), argv[2])


if __name__ == "__main__":
    main(sys.argv)
