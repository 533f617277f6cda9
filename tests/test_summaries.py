"""The TensorBoard heatmaps (``summaries``), checked as images a person reads.

Pure NumPy and matplotlib on small tables (no search): the labels are drawn in the margins, the
colour shows a near-uniform edge's winner, the genotype's boxes sit on exactly the kept cells,
P-DARTS' pruned edges leave blanks, and bad tables are refused. The heatmaps of a real search
run are checked in ``test_search_cli.py``; the run names of the event directories here too.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import run_loop, summaries

EDGES, OPS = 5, 8  # a 2-node cell


def near_uniform(rows=EDGES, seed=0):
    """The op softmax of alphas as a search starts: 1e-3 * N(0, 1)."""
    return genotype_lib.softmax(1e-3 * np.random.default_rng(seed).normal(size=(rows, OPS)))


def colour(image, cells, i, j):
    """The fill colour of cell (i, j): sampled above the printed value, inside any box."""
    top, left, bottom, right = cells[i, j]
    return image[int(top + 0.25 * (bottom - top)), int((left + right) / 2)].astype(int)


def grid_box(cells):
    top, left = cells[..., 0].min(), cells[..., 1].min()
    bottom, right = cells[..., 2].max(), cells[..., 3].max()
    return int(np.floor(top)), int(np.floor(left)), int(np.ceil(bottom)), int(np.ceil(right))


def test_edge_labels_follow_the_genotype_edge_order():
    assert summaries.edge_labels(2) == [
        "n0←c_{k-2}", "n0←c_{k-1}", "n1←c_{k-2}", "n1←c_{k-1}", "n1←n0",
    ]  # fmt: skip
    assert len(summaries.edge_labels(4)) == 14 and summaries.edge_labels(4)[-1] == "n3←n2"
    assert [summaries.cell_steps(n) for n in (2, 5, 9, 14)] == [1, 2, 3, 4]


def test_kept_mask_marks_each_genes_edge_and_op():
    genes = [("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 2), ("dil_conv_3x3", 0)]
    mask = summaries.kept_mask(genes, [genotype_lib.PRIMITIVES] * EDGES)
    ops = genotype_lib.PRIMITIVES.index
    expected = {(1, ops("sep_conv_3x3")), (0, ops("skip_connect"))}  # node 0: edges 0, 1
    expected |= {(4, ops("max_pool_3x3")), (2, ops("dil_conv_3x3"))}  # node 1: edges 2, 3, 4
    assert {tuple(int(x) for x in pair) for pair in np.argwhere(mask)} == expected
    # A derived genotype keeps, per node, two edges and on each the op of largest weight.
    alphas = np.random.default_rng(1).normal(size=(EDGES, OPS))
    derived = genotype_lib.derive_genotype(alphas, alphas, steps=2, multiplier=2)
    mask = summaries.kept_mask(derived.normal, [genotype_lib.PRIMITIVES] * EDGES)
    assert mask.sum() == 4 and mask[:2].sum() == 2 and mask[2:].sum() == 2
    for edge, op in np.argwhere(mask):
        assert op == 1 + np.argmax(alphas[edge, 1:])  # 'none' never kept


def test_labels_are_drawn_in_the_margins():
    p = near_uniform()
    image, cells = summaries.heatmap_image(p, title="normal cell", with_cells=True)
    other = summaries.heatmap_image(
        p, title="normal cell", op_names=[f"x{k}" for k in range(OPS)],
        edge_names=[f"edge {e}" for e in range(EDGES)],
    )  # fmt: skip
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert image.shape == other.shape
    assert 600 <= image.shape[1] <= 900
    top, left, bottom, right = grid_box(cells)
    assert np.array_equal(image[top:bottom, left:right], other[top:bottom, left:right])
    rows = (slice(top, bottom), slice(0, left - 3))  # left of the cells: the edge names
    columns = (slice(bottom + 3, None), slice(0, right))  # below the cells: the op names
    for region in (rows, columns):
        assert not np.array_equal(image[region], other[region])
        for picture in (image, other):
            dark = np.all(picture[region] < 90, axis=-1)
            assert dark.sum() > 50  # text pixels
    title = (slice(0, top - 3), slice(left, right))
    assert np.all(image[title] < 90, axis=-1).sum() > 50


def test_the_winner_of_a_near_uniform_edge_stands_out():
    # The table that was one uniform block on the old 0..1 scale: p differs by < 0.006.
    alphas = np.zeros((EDGES, OPS))
    alphas[0, 7] = 0.05
    image, cells = summaries.heatmap_image(genotype_lib.softmax(alphas), with_cells=True)
    winner, losers = colour(image, cells, 0, 7), [colour(image, cells, 0, j) for j in range(7)]
    assert all(np.array_equal(loser, losers[0]) for loser in losers)
    assert np.abs(winner - losers[0]).max() > 60
    assert winner[0] > winner[2] + 60  # red: above uniform
    assert losers[0][2] > losers[0][0]  # bluish: below uniform
    uniform = [colour(image, cells, i, j) for i in range(1, EDGES) for j in range(OPS)]
    assert all(np.array_equal(c, uniform[0]) for c in uniform)  # uniform edges: one colour
    assert np.abs(uniform[0] - losers[0]).max() > 0  # ... not the losers' colour
    assert np.abs(uniform[0] - 247).max() < 12  # ... the map's white centre
    # Random near-uniform alphas: no two edges alike, more than one colour in every row.
    image, cells = summaries.heatmap_image(near_uniform(), with_cells=True)
    for i in range(EDGES):
        assert len({tuple(colour(image, cells, i, j)) for j in range(OPS)}) > 1


def test_the_kept_boxes_change_exactly_the_kept_cells():
    p = near_uniform()
    kept = np.zeros((EDGES, OPS), bool)
    kept[1, 4] = kept[3, 0] = True
    plain, cells = summaries.heatmap_image(p, kept=np.zeros_like(kept), with_cells=True)
    boxed = summaries.heatmap_image(p, kept=kept)
    changed = np.any(plain != boxed, axis=-1)
    inside = np.zeros_like(changed)
    for i, j in np.argwhere(kept):
        top, left, bottom, right = cells[i, j]
        inside[int(top) : int(np.ceil(bottom)) + 1, int(left) : int(np.ceil(right)) + 1] = True
        ring = changed[int(top) : int(bottom), int(left) : int(right)]
        assert ring.sum() > 100  # a box around the cell ...
        assert not ring[ring.shape[0] // 3 : -ring.shape[0] // 3, 6:-6].any()  # ... not over it
    assert changed.any() and not (changed & ~inside).any()
    dark = boxed[changed]
    assert np.all(dark < 60)  # black


def test_pruned_edges_are_drawn_on_the_union_of_their_ops():
    edge_ops = [("max_pool_3x3", "sep_conv_3x3")] * 3 + [("skip_connect", "sep_conv_3x3")] * 2
    p = genotype_lib.softmax(np.array([[0.0, 0.1]] * EDGES))
    image, cells = summaries.heatmap_image(p, edge_ops=edge_ops, with_cells=True)
    assert cells.shape[:2] == (EDGES, 3)  # max_pool_3x3, skip_connect, sep_conv_3x3
    blank = np.array([217, 217, 217])
    for i in range(EDGES):
        present = (0, 2) if i < 3 else (1, 2)
        for j in range(3):
            is_blank = np.array_equal(colour(image, cells, i, j), blank)
            assert is_blank == (j not in present), (i, j)
        assert colour(image, cells, i, 2)[0] > colour(image, cells, i, present[0])[0]
    genes = [("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 2)]
    mask = summaries.kept_mask(genes, edge_ops)  # in each edge's own columns
    assert mask.tolist() == [[False, True], [True, False], [False, False], [True, False],
                             [False, True]]  # fmt: skip
    with pytest.raises(ValueError, match="'skip_connect' of node 0 is no candidate of edge 0"):
        summaries.kept_mask([("skip_connect", 0), *genes[1:]], edge_ops)


def test_bad_tables_are_refused():
    p = near_uniform()
    for values, message in (
        (p[0], r"\[edges, ops\] table, got shape \(8,\)"),
        (p[None], r"\[edges, ops\] table, got shape \(1, 5, 8\)"),
        (np.zeros((0, 8)), "non-empty"),
        (p[:4], "4 edges is no cell's edge count"),
        (np.where(np.eye(EDGES, OPS) > 0, np.nan, p), "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            summaries.heatmap_image(values)
    with pytest.raises(ValueError, match="7 op_names for a table of 8 ops"):
        summaries.heatmap_image(p, op_names=genotype_lib.PRIMITIVES[:7])
    with pytest.raises(ValueError, match="kept has shape"):
        summaries.heatmap_image(p, kept=np.zeros((EDGES, 7), bool))
    with pytest.raises(ValueError, match="edge_ops must name the 8 ops of each of the 5 edges"):
        summaries.heatmap_image(p, edge_ops=[genotype_lib.PRIMITIVES] * 4)
    with pytest.raises(ValueError, match="does not fit a table of 5 edges"):
        summaries.kept_mask([("skip_connect", 0)] * 8, [genotype_lib.PRIMITIVES] * EDGES)


def test_write_alpha_summaries_of_a_pruned_search(tmp_path):
    rng = np.random.default_rng(2)
    alphas = [rng.normal(size=(EDGES, 3)) for _ in range(2)]
    space = tuple(
        tuple(tuple(rng.permutation(genotype_lib.PRIMITIVES[1:])[:3]) for _ in range(EDGES))
        for _ in range(2)
    )
    derived = genotype_lib.derive_genotype(*alphas, steps=2, multiplier=2, edge_primitives=space)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_alpha_summaries(
            7, *alphas, genotype=derived, primitives=genotype_lib.PRIMITIVES,
            edge_primitives=space, epoch=2,
        )  # fmt: skip
    writer.flush()
    events = summaries.read_events(str(tmp_path))
    assert set(events) == {f"alphas/{cell}_{kind}" for cell in ("normal", "reduce")
                           for kind in ("heatmap", "entropy")}  # fmt: skip
    for index, cell in enumerate(("normal", "reduce")):
        (step, image), *_ = events[f"alphas/{cell}_heatmap"]
        expected = summaries.heatmap_image(
            genotype_lib.softmax(alphas[index]), edge_ops=space[index],
            kept=summaries.kept_mask(getattr(derived, cell), space[index]),
            title=f"{cell} cell: softmax(α) per edge — step 7, epoch 2",
        )  # fmt: skip
        assert step == 7 and np.array_equal(image, expected)


def test_run_names_tell_experiments_apart(tmp_path, monkeypatch):
    assert run_loop.run_name("/runs/demo") == "demo"
    assert run_loop.run_name("/runs/cifar10/search/") == "cifar10_search"
    assert run_loop.run_name("/runs/exp/stages/stage_2") == "exp_stage_2"
    assert run_loop.run_name("/") == "root"
    monkeypatch.chdir(tmp_path)
    assert run_loop.run_name("train") == f"{tmp_path.name}_train"  # relative: made absolute
    assert run_loop.summary_dir("/runs/demo") == "/runs/demo/summaries/demo"
