"""The plots of a sweep report (matplotlib, PNG): metrics against swept values, alpha
trajectories and search curves per run (read from the run directories by ``report``)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from ilnas_tf import genotype as genotype_lib

FAMILIES = {
    "search_val": "search-val accuracy",
    "holdout": "held-out accuracy",
    "test": "trained network: test accuracy",
}
CURVE_TAG = "learner/{}/val_accuracy"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def _x_positions(values):
    """Numeric x positions (log scale if positive and spanning >= 100x), else categories."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        xs = [float(v) for v in values]
        log = min(xs) > 0 and max(xs) / min(xs) >= 100
        return xs, None, log
    labels = ["\n".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for v in values]
    return list(range(len(values))), labels, False


def metric_plots(out, plan, names, rows):
    """One PNG per (metric family, swept axis): mean ± std against the swept value, a line per
    learner / dataset and per combination of the other axes and variants. Without a grid, one
    per family against the variants."""
    plt = _pyplot()
    axes = list(plan["grid"]) or [None]
    paths = []
    for family, title in FAMILIES.items():
        metrics = [n for n in names if n.startswith(f"{family}/")]
        if not metrics:
            continue
        for axis in axes:
            figure, ax = plt.subplots(figsize=(6.4, 4.2))
            groups = {(None, "{}"): rows} if axis is None else {}
            for row in rows if axis else ():
                others = {k: v for k, v in row["values"].items() if k != axis}
                key = (row["variant"], json.dumps(others, sort_keys=True, default=str))
                groups.setdefault(key, []).append(row)
            for (variant, others), members in groups.items():
                xs_raw = [m["values"][axis] if axis else m["variant"] for m in members]
                xs, labels, log = _x_positions(xs_raw)
                for number, metric in enumerate(metrics):
                    stats = [m[metric] for m in members]
                    # Categories: the metrics side by side around each tick.
                    shift = (number - (len(metrics) - 1) / 2) * 0.12 if labels else 0.0
                    keep = [i for i, s in enumerate(stats) if s[0] is not None]
                    if not keep:
                        continue
                    label = metric.split("/", 1)[1]
                    if axis and variant:
                        label += f" ({variant})"
                    if axis and others != "{}":
                        label += f" {others}"
                    ax.errorbar(
                        [xs[i] + shift for i in keep], [stats[i][0] for i in keep],
                        yerr=[stats[i][1] or 0.0 for i in keep], marker="o", capsize=4,
                        label=label, linestyle="-" if axis else "none",
                    )  # fmt: skip
                if labels:
                    ax.set_xticks(xs, labels, rotation=20)
                if log:
                    ax.set_xscale("log")
            ax.set_xlabel(axis or "variant")
            ax.set_ylabel(title)
            ax.set_title(f"{title} vs {axis or 'variant'} (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            name = f"{family}_vs_{(axis or 'variant').rsplit('.', 1)[-1]}.png"
            paths.append(_save(figure, os.path.join(out, "plots", name)))
    return paths


def alpha_trajectories(search_dir):
    """``(epochs, [normal, reduce] softmax arrays [epochs, edges, ops], edge_primitives)`` from
    ``genotypes/epoch_NNNN_alphas.json`` (None without those files)."""
    paths = sorted(glob.glob(os.path.join(search_dir, "genotypes", "epoch_*_alphas.json")))
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            records.append(json.load(handle))
    if not records:
        return None
    epochs = [r["epoch"] for r in records]
    cells = [np.stack([genotype_lib.softmax(np.asarray(r["alphas"][c])) for r in records])
             for c in range(2)]  # fmt: skip
    return epochs, cells, records[-1].get("edge_primitives")


def _op_names(edge_primitives, cell, edges, ops):
    """Each edge's op names: ``edge_primitives[cell]`` (P-DARTS' per-edge subsets) or all."""
    if edge_primitives:
        return [list(row) for row in edge_primitives[cell]]
    return [list(genotype_lib.PRIMITIVES[:ops])] * edges


def alpha_plot(path, epochs, probabilities, op_names, cell, title):
    """Small multiples: one panel per edge (``node←input``), a line per op over the epochs."""
    plt = _pyplot()
    edges = probabilities.shape[1]
    columns = min(edges, 5)
    rows = -(-edges // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.3 * rows), squeeze=False)
    labels = genotype_lib.edge_labels(genotype_lib.cell_steps(edges))
    colours = plt.get_cmap("tab10")
    for index in range(rows * columns):
        ax = axes[index // columns][index % columns]
        if index >= edges:
            ax.axis("off")
            continue
        for op, name in enumerate(op_names[index]):
            ax.plot(epochs, probabilities[:, index, op], marker=".", color=colours(op % 10),
                    label=name)  # fmt: skip
        ax.axhline(1.0 / len(op_names[index]), color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(labels[index], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if index >= edges - columns:
            ax.set_xlabel("epoch", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8)
    figure.suptitle(f"{title}: {cell} cell, softmax(alpha) per epoch (dotted: uniform)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(figure, path)


def search_curves(search_dir):
    """``{tag: (steps, values)}`` of the learners' val-accuracy scalars in the run's event
    files, read with TensorBoard's event multiplexer."""
    from tensorboard.backend.event_processing import event_multiplexer
    from tensorboard.util import tensor_util

    multiplexer = event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(os.path.join(search_dir, "summaries"))
    multiplexer.Reload()
    curves = {}
    for run, tags in multiplexer.Runs().items():
        for tag in tags.get("tensors", []):
            if tag.startswith("learner/") and tag.endswith("/val_accuracy"):
                events = multiplexer.Tensors(run, tag)
                curves[tag] = (
                    [e.step for e in events],
                    [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events],
                )
    return curves


def curves_plot(path, point, members):
    """Each finished run's search-val curves of one point (a line per learner and seed)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = 0
    for run in members:
        for tag, (steps, values) in sorted(search_curves(run["search_dir"]).items()):
            ax.plot(steps, values, label=f"{tag.split('/')[1]} seed {run['seed']}")
            drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("val accuracy (summary windows)")
    ax.set_title(f"{point}: search curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def write_plots(out, plan, runs, names, rows):
    """Every plot of the report; ``{"summary": [...], "alphas": [...], "curves": [...]}``."""
    images = {"summary": metric_plots(out, plan, names, rows), "alphas": [], "curves": []}
    for point in plan["points"]:
        members = [r for r in runs if r["point"]["name"] == point["name"] and r["finished"]]
        for run in members:
            trajectory = alpha_trajectories(run["search_dir"])
            if trajectory is None:
                continue
            epochs, cells, primitives = trajectory
            for cell, name in enumerate(("normal", "reduce")):
                ops = _op_names(primitives, cell, cells[cell].shape[1], cells[cell].shape[2])
                path = os.path.join(out, "plots", "alphas", point["name"],
                                    f"seed_{run['seed']}_{name}.png")  # fmt: skip
                title = f"{point['name']} seed {run['seed']}"
                images["alphas"].append(alpha_plot(path, epochs, cells[cell], ops, name, title))
        curve = curves_plot(os.path.join(out, "plots", "curves", f"{point['name']}.png"),
                            point["name"], members)  # fmt: skip
        if curve:
            images["curves"].append(curve)
    return images
