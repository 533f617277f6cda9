"""TensorBoard content of a search: labelled alpha heatmaps and entropies, and reading event
files back.

Written by ``search_loop.SearchTask`` (tags under ``learner/<name>/...``, ``search/...``,
``alphas/...``); read back by tests and tools with ``read_events``.

The heatmaps (``heatmap_image``) are matplotlib figures rendered in memory (the Agg canvas, no
files): one row per edge of the cell, labelled ``node<-input`` in the genotype's edge order
(``n0←c_{k-2}``, ``n0←c_{k-1}``, ``n1←c_{k-2}``, ``n1←c_{k-1}``, ``n1←n0``, ...), one column per
op, each cell's value printed in it. Near the start of a search every op's probability is
about ``1/n_ops``, so the colour is the *deviation from uniform* (``p - 1/n_ops`` of the edge)
on a symmetric diverging map (blue below, white at, red above uniform) scaled to the table's
largest ``|deviation|`` (the colour bar gives the scale): the ops that win an edge are red
from the first epoch on. Black boxes mark the cells the current genotype keeps.
"""

from __future__ import annotations

import collections
import glob
import os

import numpy as np
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf.genotype import cell_steps, edge_labels, softmax

CELL_KINDS = ("normal", "reduce")
_MIN_SCALE = 1e-6  # a colour scale below this is float noise: drawn as (nearly) uniform
_BLANK = "#d9d9d9"  # an op that is not a candidate of this edge (P-DARTS' pruned edges)


def mean_entropy(probabilities):
    """Mean over edges of the entropy (nats) of each edge's op distribution.

    ``log(num_ops)`` for uniform alphas (the start of a search), 0 once every edge is one-hot.
    """
    p = np.clip(np.asarray(probabilities, np.float64), 1e-300, 1.0)
    return float(np.mean(-np.sum(p * np.log(p), axis=-1)))


def kept_mask(genes, edge_ops):
    """The ``[edges, ops]`` boolean mask of the (edge, op) pairs a genotype cell keeps.

    Args:
      genes: one cell of a ``genotype.Genotype`` (``genotype.normal``): ``2 * steps``
        ``(op_name, input)`` pairs, entries ``2j`` and ``2j + 1`` of node ``j``.
      edge_ops: the op names of every edge's columns (``[edges][ops]``, node-major edge
        order; ``Architecture.edge_primitives[c]``, or the primitives on every edge).

    Raises:
      ValueError: when the genotype's nodes do not match the edges or an op is not on its edge.
    """
    genes = list(genes)
    edges = len(edge_ops)
    steps = len(genes) // 2
    if len(genes) % 2 or genotype_lib.num_cell_edges(steps) != edges:
        raise ValueError(
            f"a genotype cell of {len(genes)} entries does not fit a table of {edges} edges "
            f"(expected {2 * cell_steps(edges)} entries, 2 per node)"
        )
    mask = np.zeros((edges, len(edge_ops[0])), bool)
    for index, (op, source) in enumerate(genes):
        node = index // 2
        edge = genotype_lib.num_cell_edges(node) + source
        if op not in edge_ops[edge]:
            raise ValueError(
                f"the genotype's op {op!r} of node {node} is no candidate of edge {edge} "
                f"({list(edge_ops[edge])})"
            )
        mask[edge, list(edge_ops[edge]).index(op)] = True
    return mask


def default_op_names(ops):
    """Column names of a table of ``ops`` ops without names: ``PRIMITIVES`` for 8, else
    ``op 0, op 1, ...``."""
    if ops == len(genotype_lib.PRIMITIVES):
        return list(genotype_lib.PRIMITIVES)
    return [f"op {k}" for k in range(ops)]


def _columns(values, op_names, edge_ops):
    """``(column names, [edges, columns] table with NaN blanks, edge column -> table column)``."""
    edges, ops = values.shape
    if edge_ops is None:
        op_names = default_op_names(ops) if op_names is None else op_names
        op_names = [str(name) for name in op_names]
        if len(op_names) != ops:
            raise ValueError(f"{len(op_names)} op_names for a table of {ops} ops per edge")
        return op_names, values, np.tile(np.arange(ops), (edges, 1))
    edge_ops = [[str(op) for op in cell_ops] for cell_ops in edge_ops]
    if len(edge_ops) != edges or any(len(cell_ops) != ops for cell_ops in edge_ops):
        raise ValueError(
            f"edge_ops must name the {ops} ops of each of the {edges} edges (shape "
            f"{values.shape}), got {[len(cell_ops) for cell_ops in edge_ops]} ops on "
            f"{len(edge_ops)} edges"
        )
    if all(cell_ops == edge_ops[0] for cell_ops in edge_ops):
        return edge_ops[0], values, np.tile(np.arange(ops), (edges, 1))
    # Edges with different candidates (P-DARTS): the union of their ops, in op_names' order.
    union = {op for cell_ops in edge_ops for op in cell_ops}
    order = [str(op) for op in (genotype_lib.PRIMITIVES if op_names is None else op_names)]
    names = [op for op in order if op in union]
    names += sorted(union - set(names))
    index = np.array([[names.index(op) for op in cell_ops] for cell_ops in edge_ops])
    table = np.full((edges, len(names)), np.nan)
    np.put_along_axis(table, index, values, axis=1)
    return names, table, index


def heatmap_image(
    values,
    *,
    op_names=None,
    edge_ops=None,
    edge_names=None,
    uniform=None,
    kept=None,
    title=None,
    colour_label=None,
    with_cells=False,
):
    """A labelled heatmap of an ``[edges, ops]`` table as an RGB uint8 image ``[h, w, 3]``.

    Rows are edges (``edge_names``; default ``edge_labels`` of the cell with that many edges),
    columns ops. Each cell shows its value (3 to 5 decimals, enough for the colour scale) and is
    coloured by its deviation ``value - uniform`` on a symmetric diverging map (``RdBu_r``:
    blue below, white at, red above ``uniform``) scaled to the table's largest ``|deviation|``
    (at least ``1e-6``: smaller is float noise), with a colour bar. About 800 px wide at 100 dpi
    for 8 ops; rendered on matplotlib's Agg canvas in memory (no pyplot, no files).

    Args:
      values: ``[edges, ops]`` finite values (an alpha softmax: ops of each edge sum to 1).
      op_names: the column names when ``edge_ops`` is ``None`` (default: ``PRIMITIVES`` for 8
        ops, else ``op 0, op 1, ...``); with ``edge_ops``, the order of the union's columns.
      edge_ops: ``None`` or the op names of each edge's columns (``[edges][ops]``, P-DARTS'
        ``edge_primitives[c]``): edges with different ops are drawn on the union of their ops,
        an op that is not a candidate of an edge left blank (grey).
      edge_names: row labels (default ``edge_labels(cell_steps(edges))``).
      uniform: the value every cell has at uniform alphas: a number or one per edge (default
        ``1 / ops``).
      kept: ``None`` or a boolean ``[edges, ops]`` mask (``kept_mask``) of the cells to box.
      title: the first title line (the second names the colour scale).
      colour_label: the colour bar's label (default ``p − 1/ops``).
      with_cells: also return the cells' pixel boxes.

    Returns:
      The image, or with ``with_cells`` ``(image, cells)``: ``cells[i, j]`` is the box
      ``(top, left, bottom, right)`` in pixels of row ``i``, displayed column ``j``.

    Raises:
      ValueError: for a table that is not 2-D and finite, or arguments that do not fit it.
    """
    from matplotlib import colormaps, patches
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    values = np.asarray(values, np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"values must be a non-empty [edges, ops] table, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    edges, ops = values.shape
    names, table, index = _columns(values, op_names, edge_ops)
    rows = edge_labels(cell_steps(edges)) if edge_names is None else list(edge_names)
    if len(rows) != edges:
        raise ValueError(f"{len(rows)} edge_names for a table of {edges} edges")
    uniform = np.asarray(1.0 / ops if uniform is None else uniform, np.float64)
    if uniform.shape not in ((), (edges,)):
        raise ValueError(f"uniform must be a number or one per edge ({edges}), got {uniform}")
    uniform = np.broadcast_to(uniform, (edges,))
    if kept is not None:
        kept = np.asarray(kept, bool)
        if kept.shape != values.shape:
            raise ValueError(f"kept has shape {kept.shape}; expected {values.shape}")
    deviation = table - uniform[:, None]
    scale = max(float(np.nanmax(np.abs(deviation))), _MIN_SCALE)
    decimals = int(np.clip(np.ceil(-np.log10(scale)) + 1, 3, 5))
    if colour_label is None:
        colour_label = f"p − 1/{ops}"

    columns = len(names)
    dpi, left, right, top, bottom = 100, 1.05, 1.15, 0.62, 1.0
    width = max(left + 0.72 * columns + right, 5.0)
    height = top + 0.3 * edges + bottom
    figure = Figure(figsize=(width, height), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    box = [left / width, bottom / height, 1 - (left + right) / width, 1 - (top + bottom) / height]
    axes = figure.add_axes(box)
    colour_map = colormaps["RdBu_r"].with_extremes(bad=_BLANK)
    image = axes.imshow(
        deviation, cmap=colour_map, norm=Normalize(-scale, scale), aspect="auto",
        interpolation="nearest",
    )  # fmt: skip
    axes.set_xticks(range(columns), names, rotation=35, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(edges), rows)
    axes.tick_params(labelsize=8, length=2)
    axes.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
    axes.set_yticks(np.arange(edges + 1) - 0.5, minor=True)
    axes.grid(which="minor", color="white", linewidth=1.0)
    axes.tick_params(which="minor", length=0)
    cell_width = (1 - (left + right) / width) * width * dpi / columns  # pixels
    cell_height = 0.3 * dpi
    for i in range(edges):
        for j in range(ops):
            column = index[i, j]
            light = abs(deviation[i, column]) / scale < 0.6
            axes.text(
                column, i, f"{table[i, column]:.{decimals}f}", ha="center", va="center",
                fontsize=7, color="#111111" if light else "white",
            )  # fmt: skip
            if kept is not None and kept[i, j]:
                inset_x, inset_y = 3.5 / cell_width, 3.5 / cell_height
                axes.add_patch(
                    patches.Rectangle(
                        (column - 0.5 + inset_x, i - 0.5 + inset_y), 1 - 2 * inset_x,
                        1 - 2 * inset_y, fill=False, edgecolor="black", linewidth=2.0,
                    )
                )  # fmt: skip
    legend = f"colour: {colour_label}, scale ±{scale:.2g}"
    if kept is not None:
        legend += "; black boxes: kept by the genotype"
    axes.set_title(legend if title is None else f"{title}\n{legend}", fontsize=9)
    colour_axes = figure.add_axes(
        [(left + box[2] * width + 0.15) / width, box[1], 0.15 / width, box[3]]
    )
    bar = figure.colorbar(image, cax=colour_axes)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(colour_label, fontsize=8)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if not with_cells:
        return rgb
    x0, y0, x1, y1 = axes.get_window_extent().extents
    height_px = rgb.shape[0]
    j, i = np.meshgrid(np.arange(columns), np.arange(edges))
    step_x, step_y = (x1 - x0) / columns, (y1 - y0) / edges
    cells = np.stack(
        [height_px - y1 + i * step_y, x0 + j * step_x, height_px - y1 + (i + 1) * step_y,
         x0 + (j + 1) * step_x], axis=-1,
    )  # fmt: skip
    return rgb, cells


def write_alpha_summaries(
    step,
    alpha_normal,
    alpha_reduce,
    edge_weights=None,
    *,
    genotype=None,
    primitives=None,
    edge_primitives=None,
    epoch=None,
):
    """Heatmaps and mean entropies of both cells' op distributions (default writer).

    ``alphas/<cell>_heatmap``: the op softmax of every edge (``heatmap_image``; the title names
    the cell, the step and the epoch) and ``alphas/<cell>_entropy``.

    ``edge_weights``: ``None`` or per-edge weights ``(normal, reduce)`` (PC-DARTS' beta_hat,
    ``Architecture.edge_weights``): then also ``alphas/<cell>_edge_weighted_heatmap``, the op
    softmax times each edge's weight (what the derivation ranks; uniform is ``1 / (ops *
    inputs of the node)``), and the edge weights as ``betas/<cell>_heatmap`` (one column
    "edge weight", uniform ``1 / inputs``) and ``betas/<cell>_entropy`` (mean over nodes of the
    entropy of its incoming edges' weights, as in ``mean_entropy``).

    Args:
      step: the summaries' step (also in the titles).
      alpha_normal, alpha_reduce: the ``[edges, ops]`` alphas.
      edge_weights: see above.
      genotype: ``None`` or the current ``genotype.Genotype``: its (edge, op) pairs are boxed.
      primitives: the op names of the columns (``Architecture.primitives``; default:
        ``heatmap_image``'s).
      edge_primitives: ``None`` or per-edge op subsets ``(normal, reduce)``
        (``Architecture.edge_primitives``, P-DARTS).
      epoch: ``None`` or the (1-based) epoch, for the titles.
    """
    when = "" if step is None else f" — step {int(step)}"
    when += "" if epoch is None else f", epoch {int(epoch)}"
    for index, (cell, alphas) in enumerate(zip(CELL_KINDS, (alpha_normal, alpha_reduce))):
        probabilities = softmax(alphas)
        edges, ops = probabilities.shape
        if edge_primitives is not None:
            edge_ops = edge_primitives[index]
        elif primitives is not None:
            edge_ops = [primitives] * edges
        else:
            edge_ops = None
        kept = None
        if genotype is not None:
            names = edge_ops or [default_op_names(ops)] * edges
            kept = kept_mask(getattr(genotype, cell), names)
        labels = dict(op_names=primitives, edge_ops=edge_ops, kept=kept)
        image = heatmap_image(
            probabilities, title=f"{cell} cell: softmax(α) per edge{when}", **labels
        )
        tf.summary.image(f"alphas/{cell}_heatmap", image[None], step=step, max_outputs=1)
        tf.summary.scalar(f"alphas/{cell}_entropy", mean_entropy(probabilities), step=step)
        if edge_weights is None:
            continue
        weights = np.asarray(edge_weights[index], dtype=np.float64)
        inputs = np.array([2 + node for node in range(cell_steps(edges)) for _ in range(2 + node)])
        image = heatmap_image(
            probabilities * weights[:, None], uniform=1.0 / (ops * inputs),
            title=f"{cell} cell: softmax(α) × edge weight β̂{when}",
            colour_label=f"p·β̂ − 1/({ops}·inputs)", **labels,
        )  # fmt: skip
        tf.summary.image(
            f"alphas/{cell}_edge_weighted_heatmap", image[None], step=step, max_outputs=1
        )
        image = heatmap_image(
            weights[:, None], op_names=["edge weight"], uniform=1.0 / inputs,
            kept=None if kept is None else kept.any(axis=1)[:, None],
            title=f"{cell} cell: edge weights β̂{when}", colour_label="β̂ − 1/inputs",
        )  # fmt: skip
        tf.summary.image(f"betas/{cell}_heatmap", image[None], step=step, max_outputs=1)
        tf.summary.scalar(f"betas/{cell}_entropy", _node_entropy(weights), step=step)


def _node_entropy(edge_weights):
    """Mean over intermediate nodes of the entropy of the weights of its incoming edges."""
    entropies, start, node = [], 0, 0
    while start < len(edge_weights):
        p = edge_weights[start : start + 2 + node]
        entropies.append(float(-np.sum(p * np.log(np.maximum(p, 1e-30)))))
        start, node = start + 2 + node, node + 1
    return float(np.mean(entropies))


def read_events(logdir):
    """All summaries under ``logdir`` (recursively): ``{tag: [(step, value), ...]}``.

    Scalars are floats, text is ``str``, images are uint8 arrays ``[h, w, c]``.
    """
    values = collections.defaultdict(list)
    pattern = os.path.join(logdir, "**", "events.out.tfevents.*")
    for path in sorted(glob.glob(pattern, recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                if plugin == "images" and tensor is not None:
                    decoded = tf.io.decode_png(tensor[2]).numpy()
                    values[value.tag].append((event.step, decoded))
                elif plugin == "text" and tensor is not None:
                    text = tensor.item() if tensor.ndim == 0 else tensor.ravel()[0]
                    values[value.tag].append((event.step, text.decode("utf-8")))
                elif tensor is not None:
                    values[value.tag].append((event.step, float(tensor)))
    return dict(values)
