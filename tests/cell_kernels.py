"""Test helpers: map ``SearchCell`` kernels (edge by edge) onto a ``FusedSearchCell``'s stacks.

The fused layout is described in ``ilnas_tf/fused_cell.py``: per conv op a depthwise stack over
the edges that hold it (``fused.op_edges[op]``, wave positions), pointwise stacks (``[T, E, C,
C]`` when every conv op is on every edge, else ``[P, C, C]`` over the (op, edge) pairs,
op-major) and the stride-2 ``skip_connect`` kernels over ``fused.reduce_skip_edges``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = ["copy_weights_from_search_cell", "search_cell_kernels_to_fused"]


def search_cell_kernels_to_fused(fused_cell, search_cell, values=None):
    """Maps ``SearchCell`` kernel values (``search_cell.kernels`` order) to ``fused_cell.kernels``.

    ``values`` defaults to the search cell's current kernels; any per-kernel tensors in that
    order work (e.g. gradients, which map the same way). Returns numpy arrays.
    """
    if fused_cell.spec != search_cell.spec:
        raise ValueError(f"cell specs differ: {fused_cell.spec} vs {search_cell.spec}")
    if values is None:
        values = search_cell.kernels
    values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]
    n_pre = len(search_cell.preprocess0.kernels) + len(search_cell.preprocess1.kernels)
    result = values[:n_pre]
    per_edge, offset = [], n_pre  # per reference edge: {primitive: [kernel values]}
    for edge in search_cell.edges:
        kernels = {}
        for index, op in zip(edge.active, edge.candidates):
            count = len(op.kernel_specs())
            kernels[edge.primitives[index]] = values[offset : offset + count]
            offset += count
        per_edge.append(kernels)
    if offset != len(values):
        raise ValueError(f"expected {offset} kernel values, got {len(values)}")
    dtype = values[0].dtype if values else np.float32
    stacked = {name: np.zeros(shape, dtype) for name, shape, _ in fused_cell.kernel_specs()}

    def pointwise_slot(names, t, j):
        if fused_cell.dense_pointwise:
            return (t, j)
        before = sum(len(fused_cell.op_edges[n]) for n in names[:t])
        return (before + fused_cell.op_edges[names[t]].index(j),)

    for j, i in enumerate(fused_cell.wave_order):
        for t, name in enumerate(fused_cell.conv_ops):
            if j not in fused_cell.op_edges[name]:
                continue
            slot = fused_cell.op_edges[name].index(j)
            kernels = per_edge[i][name]
            stacked[f"{name}_depthwise1"][..., slot] = kernels[0][..., 0]
            stacked["pointwise1"][pointwise_slot(fused_cell.conv_ops, t, j)] = kernels[1][0, 0]
        for t, name in enumerate(fused_cell.sep_ops):
            if j not in fused_cell.op_edges[name]:
                continue
            slot = fused_cell.op_edges[name].index(j)
            kernels = per_edge[i][name]
            stacked[f"{name}_depthwise2"][..., slot] = kernels[2][..., 0]
            stacked["pointwise2"][pointwise_slot(fused_cell.sep_ops, t, j)] = kernels[3][0, 0]
        if j in fused_cell.reduce_skip_edges:
            slot = fused_cell.reduce_skip_edges.index(j)
            kernels = per_edge[i]["skip_connect"]
            stacked["factorized_reduce"][0, slot] = kernels[0][0, 0]
            stacked["factorized_reduce"][1, slot] = kernels[1][0, 0]
    return result + [stacked[name] for name, _, _ in fused_cell.kernel_specs()]


def copy_weights_from_search_cell(fused_cell, search_cell) -> None:
    """Assigns the per-edge kernels of a built ``SearchCell`` to a built ``FusedSearchCell``."""
    for variable, value in zip(
        fused_cell.kernels, search_cell_kernels_to_fused(fused_cell, search_cell)
    ):
        variable.assign(value)


def first_order(cell, inputs, probe):
    """``cell``'s output at ``inputs = (s0, s1, weights)`` and the gradients of
    ``sum(output * probe)`` w.r.t. ``(s0, s1, weights)`` and every kernel."""
    s0, s1, weights = inputs
    with tf.GradientTape() as tape:
        tape.watch([s0, s1, weights])
        output = cell(s0, s1, weights)
        loss = tf.reduce_sum(output * probe)
    grads = tape.gradient(loss, [s0, s1, weights] + cell.kernels)
    return output, grads[:3], grads[3:]
