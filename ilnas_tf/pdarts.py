"""P-DARTS: progressive search-space pruning and skip-connect-limited genotype derivation.

Progressive DARTS (Chen et al., 2019, "Progressive Differentiable Architecture Search: Bridging
the Depth Gap between Search and Evaluation") searches in stages with a supernet that grows
deeper from stage to stage. Between stages it prunes every edge's candidate ops by their softmax
weight (8 -> 5 -> 3 ops in the paper), which keeps the deeper supernets affordable. After the
last stage it derives a genotype and then, as "search space regularization", caps the number of
``skip_connect`` ops of the normal cell by repeatedly removing the weakest skip. Within a stage
the dropout rate on ``skip_connect`` decays (:func:`skip_dropout_rate`).

This module re-implements, in NumPy and in terms of op names, the semantics of the reference
search script (functions ``get_min_k``, ``get_min_k_no_zero``, ``keep_1_on``,
``keep_2_branches``, ``delete_min_sk_prob``, ``check_sk_number``, ``parse_network`` and the end of
``main``), for any number of intermediate nodes ``steps``:

* Pruning drops the smallest softmax weight of an edge one at a time; among equal weights the
  lower column is dropped first (``np.argmin``), so survivors are the ``keep`` largest weights with
  ties won by the higher column. In the last stage (``drop_none=True``) ``'none'`` is dropped
  first whatever its weight.
* Derivation: per edge, the softmax with ``'none'`` set to 0; the op is the largest weight other
  than ``'none'`` (ties: the higher column); the edge strength is that weight. Every node keeps
  its two strongest inputs (ties: the higher input index, from a stable ascending sort of which
  the last two are taken); node 0 has only two inputs and keeps both. Genes of a node are listed
  in input order (as ``parse_network`` reads the switches), not in rank order.
* Skip limiting (normal cell only) for limits ``2 * steps`` down to 0, cumulatively: while the
  cell has more skips than the limit, the kept skip edge with the smallest skip weight (ties: the
  lower edge index) loses its skip (its weight is set to 0), then all ops and kept edges are
  picked again.

Columns are the positions in an edge's op tuple; with the project's convention (op tuples in
``genotype.PRIMITIVES`` order) they rank exactly as the reference's columns do.

Documented deviations, reachable only in degenerate inputs the reference does not handle: a
removed skip is taken out of its edge's candidates, not only given weight 0 (the two agree while
softmax weights are positive; the reference can pick a zero-weight skip again and loop forever
when weights underflow to 0), and the weakest skip is searched among the kept skip edges only
(the reference's fill value 1.0 for other edges could win a tie with a skip weight of exactly 1).

Edges are node-major (see ``genotype.num_cell_edges``); ``edge_ops[e][c]`` names column ``c`` of
row ``e`` of a cell's alpha logits.
"""

from __future__ import annotations

import math

import numpy as np

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import validation

SKIP = "skip_connect"
NONE = "none"


def _steps_for_edges(name, value, num_edges):
    """Returns ``steps`` with ``num_cell_edges(steps) == num_edges`` or fails."""
    steps = 1
    while genotype_lib.num_cell_edges(steps) < num_edges:
        steps += 1
    if genotype_lib.num_cell_edges(steps) != num_edges:
        validation.fail(name, value, "num_cell_edges(steps) edges (2, 5, 9, 14, 20, ...)")
    return steps


def _check_alpha(name, alpha, num_edges, num_ops):
    """Converts logits to float64 and checks shape ``(num_edges, num_ops)`` and finiteness."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (num_edges, num_ops):
        validation.fail(
            f"{name}.shape", alpha.shape, f"({num_edges}, {num_ops}): (edges, ops per edge)"
        )
    if not np.all(np.isfinite(alpha)):
        validation.fail(name, alpha.tolist(), "finite values")
    return alpha


def _check_cell_ops(name, edge_ops):
    """Validates one cell's per-edge op tuples; returns ``(edge_ops, steps)``."""
    sequence = validation.check_sequence(name, edge_ops, min_length=1)
    steps = _steps_for_edges(name, edge_ops, len(sequence))
    edge_ops = genotype_lib.check_cell_edge_primitives(name, sequence, steps=steps)
    return edge_ops, steps


def _prune_row(probs, ops, keep, drop_none):
    """Columns surviving on one edge, in their original order."""
    alive = list(range(len(ops)))
    drops = len(ops) - keep
    if drop_none and NONE in ops:
        alive.remove(ops.index(NONE))
        drops -= 1
    for _ in range(drops):
        # np.argmin semantics: the smallest weight, the lowest column among equal ones.
        alive.remove(min(alive, key=lambda c: (probs[c], c)))
    return alive


def prune_cell(alpha, edge_ops, keep, drop_none=False):
    """Keeps ``keep`` candidate ops on every edge of one cell by their softmax weight.

    Per edge the smallest weight is dropped one at a time (lower column first among equal
    weights, as the reference's ``np.argmin``), so the survivors are the ``keep`` largest
    weights and a tie is won by the higher column. With ``drop_none`` (the reference's last
    stage, ``get_min_k_no_zero``) ``'none'`` is dropped first whatever its weight, then the
    smallest of the others.

    Args:
        alpha: Logits of the cell, shape ``(len(edge_ops), len(edge_ops[0]))``.
        edge_ops: Per edge (node-major order) the tuple of op names of its alpha columns, the
            same number on every edge.
        keep: How many ops each edge keeps, in ``[1, len(edge_ops[0]) - 1]``: pruning always
            drops at least one op (so ``drop_none`` never leaves more than ``keep``).
        drop_none: Drop ``'none'`` first (where an edge has it).

    Returns:
        Per edge the tuple of surviving op names, in their original order.

    Raises:
        ValueError: On bad shapes or values, ``keep`` out of range, unknown op names, or if an
            edge would keep only ``'none'`` (possible with ``keep=1`` and ``drop_none=False``;
            the reference never does this, and a cell edge of only ``'none'`` is invalid).
    """
    edge_ops, _ = _check_cell_ops("edge_ops", edge_ops)
    num_ops = len(edge_ops[0])
    if num_ops < 2:
        validation.fail("edge_ops", edge_ops, "at least 2 ops per edge to prune")
    keep = validation.check_int("keep", keep, 1, num_ops - 1)
    drop_none = validation.check_bool("drop_none", drop_none)
    probs = genotype_lib.softmax(_check_alpha("alpha", alpha, len(edge_ops), num_ops))
    pruned = []
    for e, ops in enumerate(edge_ops):
        survivors = tuple(ops[c] for c in _prune_row(probs[e], ops, keep, drop_none))
        if survivors == (NONE,):
            validation.fail(
                "keep",
                keep,
                f"a value that does not leave edge {e} with only 'none' (use drop_none=True)",
            )
        pruned.append(survivors)
    return tuple(pruned)


def _both_cells_ops(edge_primitives, num_edges, steps):
    """``(normal, reduce)`` op tuples; ``None`` means all PRIMITIVES on ``num_edges`` edges."""
    if edge_primitives is None:
        return ((genotype_lib.PRIMITIVES,) * num_edges,) * 2
    return genotype_lib.check_edge_primitives("edge_primitives", edge_primitives, steps=steps)


def prune_edge_primitives(alpha_normal, alpha_reduce, edge_primitives, keep, drop_none=False):
    """Prunes both cells' candidates (:func:`prune_cell`), between two P-DARTS stages.

    Args:
        alpha_normal: Logits of the normal cell, shape ``(num_edges, ops per edge)``.
        alpha_reduce: Logits of the reduction cell, same shape.
        edge_primitives: ``None`` (every edge has all ``genotype.PRIMITIVES``; the number of
            edges is then read from ``alpha_normal``) or ``(normal, reduce)`` per-edge op
            tuples as ``genotype.check_edge_primitives`` accepts.
        keep: Ops kept per edge, in ``[1, ops per edge - 1]``.
        drop_none: Drop ``'none'`` first (the reference's last stage).

    Returns:
        ``(normal, reduce)`` per-edge op tuples, accepted by ``genotype.check_edge_primitives``.

    Raises:
        ValueError: As :func:`prune_cell`, or if the two cells do not match.
    """
    if edge_primitives is None:
        num_edges = np.shape(alpha_normal)[0] if np.ndim(alpha_normal) == 2 else 0
        steps = _steps_for_edges("alpha_normal.shape[0]", num_edges, num_edges)
    else:
        cells = validation.check_sequence("edge_primitives", edge_primitives, length=2)
        first = validation.check_sequence("edge_primitives[0]", cells[0], min_length=1)
        steps = _steps_for_edges("edge_primitives[0]", cells[0], len(first))
        num_edges = len(first)
    normal_ops, reduce_ops = _both_cells_ops(edge_primitives, num_edges, steps)
    result = (
        prune_cell(alpha_normal, normal_ops, keep, drop_none),
        prune_cell(alpha_reduce, reduce_ops, keep, drop_none),
    )
    return genotype_lib.check_edge_primitives("pruned edge_primitives", result, steps=steps)


def _pick(probs, allowed):
    """Per edge: the chosen column (largest weight, higher column on ties) and its weight.

    Edges without an allowed column get column ``-1`` and strength ``-inf`` (never kept).
    """
    columns, strengths = [], []
    for row, mask in zip(probs, allowed):
        candidates = [c for c in range(len(row)) if mask[c]]
        if not candidates:
            columns.append(-1)
            strengths.append(-math.inf)
            continue
        best = max(candidates, key=lambda c: (row[c], c))
        columns.append(best)
        strengths.append(row[best])
    return columns, strengths


def _cell_genes(probs, allowed, edge_ops, steps):
    """The reference's ``keep_1_on`` + ``keep_2_branches`` + ``parse_network`` for one cell.

    Returns:
        ``(gene, kept)``: the ``(op, input)`` pairs in node-major, input order, and the dict of
        kept edge index -> chosen op name.
    """
    columns, strengths = _pick(probs, allowed)
    gene, kept = [], {}
    start = 0
    for node in range(steps):
        inputs = range(node + 2)
        # Stable ascending sort, last two taken: ties go to the higher input index.
        ranked = sorted(inputs, key=lambda j: (strengths[start + j], j))[-2:]
        for j in sorted(ranked):
            e = start + j
            if columns[e] < 0:
                validation.fail(
                    "edge_primitives",
                    edge_ops[e],
                    f"an op other than 'none' and removed skips left on edge {e} "
                    f"(node {node} needs two inputs)",
                )
            kept[e] = edge_ops[e][columns[e]]
            gene.append((kept[e], j))
        start += node + 2
    return gene, kept


def _final_probs(name, alpha, edge_ops):
    """Softmax weights and the mask of the candidate columns (all but ``'none'``).

    The reference sets the weight of ``'none'`` to 0 instead; as weights are >= 0 and edge
    strengths are maxima, leaving ``'none'`` out of the candidates is the same.
    """
    probs = genotype_lib.softmax(_check_alpha(name, alpha, len(edge_ops), len(edge_ops[0])))
    allowed = np.array([[op != NONE for op in ops] for ops in edge_ops], dtype=bool)
    return probs, allowed


def _prepare(alpha_normal, alpha_reduce, edge_primitives, steps, multiplier):
    steps = validation.check_int("steps", steps, 1)
    multiplier = validation.check_int(
        "multiplier", steps if multiplier is None else multiplier, 1, steps
    )
    num_edges = genotype_lib.num_cell_edges(steps)
    normal_ops, reduce_ops = _both_cells_ops(edge_primitives, num_edges, steps)
    normal = (*_final_probs("alpha_normal", alpha_normal, normal_ops), normal_ops)
    reduce = (*_final_probs("alpha_reduce", alpha_reduce, reduce_ops), reduce_ops)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return normal, reduce, steps, concat


def derive_genotype(alpha_normal, alpha_reduce, edge_primitives, steps=4, multiplier=None):
    """The reference's genotype after the last P-DARTS stage.

    Per edge: softmax over the edge's ops, ``'none'`` set to 0; the op is the largest weight
    other than ``'none'`` (ties: the higher column, what ``keep_1_on`` keeps) and the edge
    strength is its weight. Every node keeps its two strongest inputs (ties: the higher input
    index; node 0 keeps both of its inputs). Genes of a node are in input order. This differs
    from ``genotype.derive_genotype`` (DARTS), which breaks ties the other way and lists genes
    in rank order.

    Args:
        alpha_normal: Logits of the normal cell, shape ``(num_cell_edges(steps), ops per edge)``.
        alpha_reduce: Logits of the reduction cell, same shape.
        edge_primitives: ``None`` (all ``genotype.PRIMITIVES`` on every edge) or the last
            stage's ``(normal, reduce)`` per-edge op tuples.
        steps: Intermediate nodes per cell.
        multiplier: States concatenated into the cell output (``None``: ``steps``); concat is
            ``range(2 + steps - multiplier, steps + 2)``.

    Returns:
        The derived ``genotype.Genotype``.

    Raises:
        ValueError: On bad shapes or values, unknown op names or ``steps`` not matching.
    """
    normal, reduce, steps, concat = _prepare(
        alpha_normal, alpha_reduce, edge_primitives, steps, multiplier
    )
    normal_gene, _ = _cell_genes(normal[0], normal[1], normal[2], steps)
    reduce_gene, _ = _cell_genes(reduce[0], reduce[1], reduce[2], steps)
    return genotype_lib.Genotype(normal_gene, concat, reduce_gene, concat)


def skip_limited_genotypes(
    alpha_normal, alpha_reduce, edge_primitives, steps=4, multiplier=None, max_limit=None
):
    """Genotypes whose normal cell has at most ``L`` skip-connects, for ``L = max_limit .. 0``.

    Starts from :func:`derive_genotype` and walks the limits downwards with one carried state
    (as the reference loop does): while the normal cell has more than ``L`` skips, the kept edge
    with op ``skip_connect`` whose skip weight (softmax, ``'none'`` zeroed) is the smallest
    (ties: the lower edge index) loses its skip (weight 0, no longer a candidate), then every
    edge's op and every node's two inputs are picked again as in :func:`derive_genotype`. Each
    removal lowers the count by at most one, so the normal cell has exactly
    ``min(L, unrestricted count)`` skips. For a limit that is already met the current genotype
    is returned unchanged (the reference logs nothing for it). The reduction cell never changes.

    Args:
        alpha_normal: Logits of the normal cell, shape ``(num_cell_edges(steps), ops per edge)``.
        alpha_reduce: Logits of the reduction cell, same shape.
        edge_primitives: As :func:`derive_genotype`.
        steps: Intermediate nodes per cell.
        multiplier: As :func:`derive_genotype`.
        max_limit: The first limit, in ``[0, 2 * steps]`` (``None``: ``2 * steps``, as the
            reference's 8 for 4 steps).

    Returns:
        A dict mapping every limit ``max_limit, ..., 0`` to its ``genotype.Genotype``.

    Raises:
        ValueError: As :func:`derive_genotype`, for ``max_limit`` out of range, or if removing
            skips leaves a node with fewer than two usable inputs (only possible when an edge's
            only op other than ``'none'`` is ``skip_connect``).
    """
    normal, reduce, steps, concat = _prepare(
        alpha_normal, alpha_reduce, edge_primitives, steps, multiplier
    )
    max_limit = validation.check_int(
        "max_limit", 2 * steps if max_limit is None else max_limit, 0, 2 * steps
    )
    probs, allowed, edge_ops = normal[0].copy(), normal[1].copy(), normal[2]
    reduce_gene, _ = _cell_genes(reduce[0], reduce[1], reduce[2], steps)
    gene, kept = _cell_genes(probs, allowed, edge_ops, steps)
    result = {}
    for limit in range(max_limit, -1, -1):
        while True:
            skip_edges = [e for e, op in kept.items() if op == SKIP]
            if len(skip_edges) <= limit:
                break
            column = {e: edge_ops[e].index(SKIP) for e in skip_edges}
            weakest = min(skip_edges, key=lambda e: (probs[e, column[e]], e))
            probs[weakest, column[weakest]] = 0.0
            allowed[weakest, column[weakest]] = False
            gene, kept = _cell_genes(probs, allowed, edge_ops, steps)
        result[limit] = genotype_lib.Genotype(gene, concat, reduce_gene, concat)
    return result


def skip_dropout_rate(initial, epoch, epochs, warmup_epochs, decay=0.2):
    """The dropout rate on ``skip_connect`` at ``epoch`` of one P-DARTS stage (reference main).

    During the warm-up epochs that train only the weights (``epoch < warmup_epochs``) the rate
    falls linearly, ``initial * (epochs - epoch - 1) / epochs``; afterwards it decays
    exponentially from ``initial``, ``initial * exp(-decay * (epoch - warmup_epochs))``.

    Args:
        initial: The stage's rate, in ``[0, 1]``.
        epoch: 0-based epoch within the stage, in ``[0, epochs - 1]``.
        epochs: Epochs of the stage, >= 1.
        warmup_epochs: Weight-only epochs at the start of the stage, in ``[0, epochs]``.
        decay: The exponential decay factor (the reference's ``scale_factor``), >= 0.

    Returns:
        The rate as a float.

    Raises:
        ValueError: If an argument is out of range.
    """
    initial = validation.check_number("initial", initial, 0.0, 1.0)
    epochs = validation.check_int("epochs", epochs, 1)
    epoch = validation.check_int("epoch", epoch, 0, epochs - 1)
    warmup_epochs = validation.check_int("warmup_epochs", warmup_epochs, 0, epochs)
    decay = validation.check_number("decay", decay, 0.0)
    if epoch < warmup_epochs:
        return initial * (epochs - epoch - 1) / epochs
    return initial * math.exp(-decay * (epoch - warmup_epochs))
