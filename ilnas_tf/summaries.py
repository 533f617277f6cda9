"""TensorBoard content of a search: alpha heatmaps and entropies, and reading event files back.

Written by ``search_loop.SearchTask`` (tags under ``learner/<name>/...``, ``search/...``,
``alphas/...``); read back by tests and tools with ``read_events``.
"""

from __future__ import annotations

import collections
import glob
import os

import numpy as np
import tensorflow as tf

from ilnas_tf.genotype import softmax

# Viridis-like colour ramp (dark blue -> green -> yellow), linearly interpolated.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)


def mean_entropy(probabilities):
    """Mean over edges of the entropy (nats) of each edge's op distribution.

    ``log(num_ops)`` for uniform alphas (the start of a search), 0 once every edge is one-hot.
    """
    p = np.clip(np.asarray(probabilities, np.float64), 1e-300, 1.0)
    return float(np.mean(-np.sum(p * np.log(p), axis=-1)))


def heatmap_image(probabilities, cell_pixels=12):
    """An RGB uint8 image ``[edges * px, ops * px, 3]`` of an ``[edges, ops]`` probability table.

    Rows are edges (in ``genotype`` order), columns ops (``PRIMITIVES`` order); colour is the
    probability on a 0..1 scale, with 1-pixel dark grid lines between cells.
    """
    p = np.clip(np.asarray(probabilities, np.float64), 0.0, 1.0)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [edges, ops], got shape {p.shape}")
    position = p * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    colours = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction
    image = np.repeat(np.repeat(colours, cell_pixels, axis=0), cell_pixels, axis=1)
    image[::cell_pixels, :, :] = 20
    image[:, ::cell_pixels, :] = 20
    return image.round().astype(np.uint8)


def write_alpha_summaries(step, alpha_normal, alpha_reduce, edge_weights=None):
    """Heatmaps and mean entropies of both cells' op distributions (default writer).

    ``edge_weights``: ``None`` or per-edge weights ``(normal, reduce)`` (PC-DARTS' beta_hat,
    ``Architecture.edge_weights``): then also ``alphas/<cell>_edge_weighted_heatmap``, the op
    softmax times each edge's weight (what the derivation ranks), and the edge weights as
    ``betas/<cell>_heatmap`` (one column) and ``betas/<cell>_entropy`` (mean over nodes of the
    entropy of its incoming edges' weights, as in ``mean_entropy``).
    """
    cells = (("normal", alpha_normal), ("reduce", alpha_reduce))
    for index, (cell, alphas) in enumerate(cells):
        probabilities = softmax(alphas)
        tf.summary.image(
            f"alphas/{cell}_heatmap", heatmap_image(probabilities)[None], step=step, max_outputs=1
        )
        tf.summary.scalar(f"alphas/{cell}_entropy", mean_entropy(probabilities), step=step)
        if edge_weights is None:
            continue
        weights = np.asarray(edge_weights[index], dtype=np.float64)
        weighted = probabilities * weights[:, None]
        tf.summary.image(
            f"alphas/{cell}_edge_weighted_heatmap", heatmap_image(weighted)[None], step=step,
            max_outputs=1,
        )  # fmt: skip
        tf.summary.image(
            f"betas/{cell}_heatmap", heatmap_image(weights[:, None])[None], step=step,
            max_outputs=1,
        )  # fmt: skip
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
