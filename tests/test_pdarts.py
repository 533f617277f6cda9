"""Tests of ``ilnas_tf.pdarts``: P-DARTS pruning, derivation, skip limiting, dropout schedule.

Expected results are derived by hand from the rules of the P-DARTS reference search script
(Chen et al., 2019); the randomized tests compare with an index-based port written here, which
works on boolean switch matrices over ``PRIMITIVES`` as the reference does (4 steps, 14 edges).
"""

import math

import numpy as np
import pytest

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import pdarts
from ilnas_tf.genotype import PRIMITIVES, Genotype

NUM_EDGES = 14
CONCAT = (2, 3, 4, 5)
SEP3, SEP5, DIL5 = "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5"
SKIP, NONE = "skip_connect", "none"


# --- An index-based port of the reference's switch manipulation (4 steps only). -------------


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    exps = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return exps / np.sum(exps, axis=-1, keepdims=True)


def _min_k(weights, k):
    weights, dropped = np.array(weights, np.float64), []
    for _ in range(k):
        index = int(np.argmin(weights))
        dropped.append(index)
        weights[index] = 1.0
    return dropped


def _min_k_no_zero(weights, active, k):
    weights, dropped, offset = np.array(weights, np.float64), [], 0
    if 0 in active:
        weights, offset, k = weights[1:], 1, k - 1
        dropped.append(0)
    for _ in range(k):
        index = int(np.argmin(weights))
        weights[index] = 1.0
        dropped.append(index + offset)
    return dropped


def _ref_prune(switches, probs, drop, last):
    pruned = switches.copy()
    for e in range(NUM_EDGES):
        active = np.flatnonzero(switches[e]).tolist()
        columns = _min_k_no_zero(probs[e], active, drop) if last else _min_k(probs[e], drop)
        for column in columns:
            pruned[e, active[column]] = False
    return pruned


def _ref_keep_one(switches_backup, probs):
    return _ref_prune(switches_backup, probs, 2, last=True)


def _ref_keep_two(switches, probs):
    strengths = [max(row) for row in probs]
    keep, start = [0, 1], 2
    for n in (3, 4, 5):
        order = sorted(range(n), key=lambda x, s=start: strengths[s + x])
        keep += [start + order[-1], start + order[-2]]
        start += n
    kept = switches.copy()
    for e in range(NUM_EDGES):
        if e not in keep:
            kept[e, :] = False
    return kept


def _ref_parse(switches):
    gene, start = [], 0
    for n in (2, 3, 4, 5):
        for e in range(start, start + n):
            gene += [(PRIMITIVES[k], e - start) for k in np.flatnonzero(switches[e])]
        start += n
    return gene


def _ref_delete_min_skip(switches, switches_backup, probs):
    def skip_column(e):
        return int(np.sum(switches_backup[e, :3])) if switches[e, 3] else -1

    probs = probs.copy()
    skip_probs = [probs[e, skip_column(e)] if switches[e, 3] else 1.0 for e in range(NUM_EDGES)]
    weakest = int(np.argmin(skip_probs))
    probs[weakest, skip_column(weakest)] = 0.0
    return probs


def _ref_search(alphas):
    """Runs the reference pruning (drops 3, 2, 2), derivation and skip loop on given alphas.

    Returns:
        The op names per edge after each pruning, the derived genotype and the dict of
        skip-limited genotypes.
    """
    switches = [np.ones((NUM_EDGES, len(PRIMITIVES)), bool) for _ in range(2)]
    stage_switches = []
    for stage, drop in enumerate((3, 2, 2)):
        stage_switches.append([s.copy() for s in switches])
        last = stage == 2
        switches = [
            _ref_prune(s, _softmax(a), drop, last)
            for s, a in zip(switches, alphas[stage], strict=True)
        ]
    backups = stage_switches[2]
    probs = [_softmax(a) for a in alphas[2]]
    for p, s in zip(probs, backups, strict=True):
        p[s[:, 0], 0] = 0.0
    stage_switches.append(switches)
    switches = [_ref_keep_two(s, p) for s, p in zip(switches, probs, strict=True)]
    genotype = Genotype(_ref_parse(switches[0]), CONCAT, _ref_parse(switches[1]), CONCAT)
    normal, normal_probs, limited = switches[0], probs[0], {}
    for max_skip in range(8, -1, -1):
        while int(np.sum(normal[:, 3])) > max_skip:
            normal_probs = _ref_delete_min_skip(normal, backups[0], normal_probs)
            normal = _ref_keep_one(backups[0], normal_probs)
            normal = _ref_keep_two(normal, normal_probs)
        limited[max_skip] = Genotype(_ref_parse(normal), CONCAT, _ref_parse(switches[1]), CONCAT)
    names = [
        [tuple(tuple(PRIMITIVES[k] for k in np.flatnonzero(row)) for row in s) for s in stage]
        for stage in stage_switches[1:]
    ]
    return names, genotype, limited


def _random_alphas(rng, integer):
    """Logits for the three stages (8, 5, 3 ops); skip is favoured, integers give ties."""
    alphas, switches = [], [np.ones((NUM_EDGES, len(PRIMITIVES)), bool) for _ in range(2)]
    for drop in (3, 2, 2):
        num_ops = int(np.sum(switches[0][0]))
        if integer:
            cells = rng.integers(-1, 2, size=(2, NUM_EDGES, num_ops)).astype(np.float64)
        else:
            cells = rng.normal(size=(2, NUM_EDGES, num_ops)) * 1.5
        for cell, cell_switches in zip(cells, switches, strict=True):
            # Column of skip_connect where it is still a candidate: active ops before index 3.
            for e in np.flatnonzero(cell_switches[:, 3]):
                cell[e, int(np.sum(cell_switches[e, :3]))] += 1.0 if integer else 1.5
        alphas.append(cells)
        switches = [
            _ref_prune(s, _softmax(a), drop, drop == 2 and num_ops == 3)
            for s, a in zip(switches, cells, strict=True)
        ]
    return alphas


def _count_skips(cell):
    return sum(op == SKIP for op, _ in cell)


@pytest.mark.parametrize("seed", range(50))
def test_matches_reference_port_on_random_alphas(seed):
    rng = np.random.default_rng(seed)
    alphas = _random_alphas(rng, integer=seed % 2 == 1)
    (stage1_ops, stage2_ops, final_ops), ref_genotype, ref_limited = _ref_search(alphas)
    assert pdarts.prune_edge_primitives(*alphas[0], None, keep=5) == tuple(stage1_ops)
    assert pdarts.prune_edge_primitives(*alphas[1], stage1_ops, keep=3) == tuple(stage2_ops)
    last = pdarts.prune_edge_primitives(*alphas[2], stage2_ops, keep=1, drop_none=True)
    assert last == tuple(final_ops)
    assert pdarts.derive_genotype(*alphas[2], stage2_ops) == ref_genotype
    limited = pdarts.skip_limited_genotypes(*alphas[2], stage2_ops)
    assert limited == ref_limited
    unrestricted = _count_skips(ref_genotype.normal)
    for limit, genotype in limited.items():
        assert _count_skips(genotype.normal) == min(limit, unrestricted)
        assert genotype.reduce == ref_genotype.reduce


# --- Pruning. ------------------------------------------------------------------------------


def _cell(row, num_ops=8):
    return np.tile(np.asarray(row, np.float64), (NUM_EDGES, 1)).reshape(NUM_EDGES, num_ops)


FULL = (PRIMITIVES,) * NUM_EDGES


def test_prune_keeps_largest_weights_in_original_order():
    alpha = np.zeros((NUM_EDGES, 8))
    alpha[0] = np.arange(8)
    alpha[1] = -np.arange(8)
    alpha[2] = [0.5, 3, -1, 2, 0.1, 7, -4, 1]
    pruned = pdarts.prune_cell(alpha, FULL, keep=5)
    assert pruned[0] == PRIMITIVES[3:]
    assert pruned[1] == PRIMITIVES[:5]
    assert pruned[2] == (NONE, "max_pool_3x3", SKIP, SEP5, DIL5)
    pruned = pdarts.prune_cell(alpha, FULL, keep=2)
    assert pruned[2] == ("max_pool_3x3", SEP5)


def test_prune_ties_drop_lower_column_first():
    pruned = pdarts.prune_cell(np.zeros((NUM_EDGES, 8)), FULL, keep=5)
    assert set(pruned) == {PRIMITIVES[3:]}
    assert pdarts.prune_cell(np.zeros((NUM_EDGES, 8)), FULL, keep=1)[0] == ("dil_conv_5x5",)
    # Zeros (columns 4..7) go first, then the lowest of the tied ones (column 1).
    pruned = pdarts.prune_cell(_cell([5, 1, 1, 1, 0, 0, 0, 0]), FULL, keep=3)
    assert pruned[0] == (NONE, "avg_pool_3x3", SKIP)


def test_prune_none_handling():
    ops = ((NONE, SKIP, SEP3),) * NUM_EDGES
    alpha = _cell([9, 0, 1], 3)
    assert pdarts.prune_cell(alpha, ops, keep=2) == ((NONE, SEP3),) * NUM_EDGES
    assert pdarts.prune_cell(alpha, ops, keep=2, drop_none=True) == ((SKIP, SEP3),) * NUM_EDGES
    assert pdarts.prune_cell(alpha, ops, keep=1, drop_none=True) == ((SEP3,),) * NUM_EDGES
    with pytest.raises(ValueError, match="only 'none'"):
        pdarts.prune_cell(alpha, ops, keep=1)
    # Without 'none' on an edge drop_none changes nothing; a tie keeps the higher column.
    mixed = ops[:1] + (("max_pool_3x3", SKIP, SEP3),) * (NUM_EDGES - 1)
    pruned = pdarts.prune_cell(np.zeros((NUM_EDGES, 3)), mixed, keep=1, drop_none=True)
    assert set(pruned) == {(SEP3,)}
    pruned = pdarts.prune_cell(_cell([-3, 0, 0], 3), mixed, keep=2, drop_none=True)
    assert pruned[0] == (SKIP, SEP3) and pruned[1] == (SKIP, SEP3)


def _stage_alphas():
    """Hand-built logits of three stages; see test_stages_then_final_derivation."""
    stage0 = _cell([3, 0, 0, 2, 1, 1, 0, 0])
    stage1 = np.array([[2, 1, 0, 1, 1] if e % 2 == 0 else [0, 3, 0, 1, 1] for e in range(14)])
    stage2 = np.array(
        [[5, 1, 1], [2, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0], [3, 0, 0], [0, 2, 0],
         [0, 0, 0], [10, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 2], [0, 0, 0], [0, 3, 0]],
        np.float64,
    )  # fmt: skip
    return stage0, stage1, stage2


def test_stages_then_final_derivation():
    stage0, stage1, stage2 = _stage_alphas()
    ops5 = pdarts.prune_edge_primitives(stage0, stage0, None, keep=5)
    # Columns 1, 2, 6 have the smallest weights (ties: lowest first).
    assert ops5 == ((("none", SKIP, SEP3, SEP5, DIL5),) * NUM_EDGES,) * 2
    assert genotype_lib.check_edge_primitives("ops", ops5) == ops5
    ops3 = pdarts.prune_edge_primitives(stage1, stage1, ops5, keep=3)
    even, odd = (NONE, SEP5, DIL5), (SKIP, SEP5, DIL5)
    assert ops3[0] == tuple(even if e % 2 == 0 else odd for e in range(NUM_EDGES))
    derived = pdarts.derive_genotype(stage2, np.zeros((NUM_EDGES, 3)), ops3)
    # Node 0: e0 'none' zeroed, sep/dil tie -> dil; e1 skip. Node 1: all tied -> inputs 1, 2.
    # Node 2: e5 skip (0.91), e6 sep5 (0.79). Node 3: e13 sep5 (0.91), e11 dil5 (0.79).
    assert derived.normal == (
        (DIL5, 0), (SKIP, 1), (DIL5, 1), (DIL5, 2), (SKIP, 0), (SEP5, 1), (DIL5, 2), (SEP5, 4),
    )  # fmt: skip
    # All-zero reduce logits: every op is dil5 (last column), every node keeps its last inputs.
    assert derived.reduce == ((DIL5, 0), (DIL5, 1), (DIL5, 1), (DIL5, 2), (DIL5, 2), (DIL5, 3),
                              (DIL5, 3), (DIL5, 4))  # fmt: skip
    assert derived.normal_concat == derived.reduce_concat == CONCAT
    limited = pdarts.skip_limited_genotypes(stage2, np.zeros((NUM_EDGES, 3)), ops3)
    assert sorted(limited) == list(range(9))
    assert all(limited[limit] == derived for limit in range(2, 9))
    # Weakest skip is e1 (0.67 < 0.91): it becomes dil5 (logit 1 > 0).
    assert limited[1].normal == derived.normal[:1] + ((DIL5, 1),) + derived.normal[2:]
    # Then e5 loses its skip and falls behind e6 and e7 (dil5 by the tie rule).
    assert limited[0].normal[4:6] == ((SEP5, 1), (DIL5, 2))
    assert all(g.reduce == derived.reduce for g in limited.values())


def _replacement_alphas():
    """Normal-cell logits over (max_pool_3x3, skip_connect, sep_conv_3x3) with skips in nodes
    0 and 1; node 1 has three skip edges of falling strength."""
    alpha = _cell([0, -5, 3], 3)
    alpha[0] = [0, 1, 0]
    alpha[2] = [0, 4, 0]
    alpha[3] = [0, 3, 0]
    alpha[4] = [0, 2, 1]
    return alpha


def test_skip_limit_with_replacement_by_another_skip():
    ops = ((("max_pool_3x3", SKIP, SEP3),) * NUM_EDGES,) * 2
    alpha = _replacement_alphas()
    limited = pdarts.skip_limited_genotypes(alpha, alpha, ops)
    rest = ((SEP3, 2), (SEP3, 3), (SEP3, 3), (SEP3, 4))
    unrestricted = ((SKIP, 0), (SEP3, 1), (SKIP, 0), (SKIP, 1)) + rest
    assert all(limited[limit].normal == unrestricted for limit in range(3, 9))
    assert limited[2].normal == ((SEP3, 0), (SEP3, 1), (SKIP, 0), (SKIP, 1)) + rest
    # Removing e3's skip lets e4 (another skip) in; e4's skip goes next.
    assert limited[1].normal == ((SEP3, 0), (SEP3, 1), (SKIP, 0), (SEP3, 2)) + rest
    assert limited[0].normal == ((SEP3, 0), (SEP3, 1), (SEP3, 1), (SEP3, 2)) + rest
    assert all(g.reduce == unrestricted for g in limited.values())
    partial = pdarts.skip_limited_genotypes(alpha, alpha, ops, max_limit=2)
    assert partial == {limit: limited[limit] for limit in range(3)}


def test_skip_limit_fails_when_a_node_runs_out_of_inputs():
    ops = (((NONE, SKIP),) * NUM_EDGES,) * 2
    alpha = _cell([0, 1], 2)
    assert _count_skips(pdarts.derive_genotype(alpha, alpha, ops).normal) == 8
    with pytest.raises(ValueError, match="needs two inputs"):
        pdarts.skip_limited_genotypes(alpha, alpha, ops)


def test_other_steps_and_multiplier():
    alpha = np.zeros((genotype_lib.num_cell_edges(2), 8))
    derived = pdarts.derive_genotype(alpha, alpha, None, steps=2, multiplier=1)
    assert derived.normal == ((DIL5, 0), (DIL5, 1), (DIL5, 1), (DIL5, 2))
    assert derived.normal_concat == (3,)
    assert pdarts.derive_genotype(alpha, alpha, None, steps=2).normal_concat == (2, 3)
    limited = pdarts.skip_limited_genotypes(alpha, alpha, None, steps=2)
    assert sorted(limited) == [0, 1, 2, 3, 4]


# --- Validation. ---------------------------------------------------------------------------


def test_validation_errors():
    alpha = np.zeros((NUM_EDGES, 8))
    with pytest.raises(ValueError, match=r"alpha.shape=\(14, 7\) is invalid"):
        pdarts.prune_cell(np.zeros((NUM_EDGES, 7)), FULL, keep=3)
    with pytest.raises(ValueError, match="finite"):
        pdarts.prune_cell(np.where(np.eye(14, 8) > 0, np.nan, 0.0), FULL, keep=3)
    for keep in (0, 8, 2.0, True):
        with pytest.raises(ValueError, match="keep="):
            pdarts.prune_cell(alpha, FULL, keep=keep)
    with pytest.raises(ValueError, match="edge_ops"):
        pdarts.prune_cell(alpha, (("conv_7x7",) + PRIMITIVES[1:],) * NUM_EDGES, keep=3)
    with pytest.raises(ValueError, match="edge_ops"):
        pdarts.prune_cell(alpha[:13], FULL[:13], keep=3)
    with pytest.raises(ValueError, match="alpha_normal"):
        pdarts.prune_edge_primitives(alpha[:13], alpha[:13], None, keep=3)
    with pytest.raises(ValueError, match="alpha_normal.shape"):
        pdarts.derive_genotype(alpha, alpha, None, steps=3)
    with pytest.raises(ValueError, match="edge_primitives"):
        pdarts.derive_genotype(alpha[:9], alpha[:9], (FULL, FULL), steps=3)
    with pytest.raises(ValueError, match="multiplier=5"):
        pdarts.derive_genotype(alpha, alpha, None, multiplier=5)
    with pytest.raises(ValueError, match="max_limit=9"):
        pdarts.skip_limited_genotypes(alpha, alpha, None, max_limit=9)


# --- Skip-connect dropout schedule. --------------------------------------------------------


def test_skip_dropout_rate_schedule():
    def rate(epoch):
        return pdarts.skip_dropout_rate(0.3, epoch, epochs=25, warmup_epochs=10)

    assert rate(0) == pytest.approx(0.3 * 24 / 25)
    assert rate(9) == pytest.approx(0.18)
    assert rate(10) == pytest.approx(0.3)
    assert rate(12) == pytest.approx(0.3 * math.exp(-0.4))
    assert rate(24) == pytest.approx(0.3 * math.exp(-2.8))
    assert pdarts.skip_dropout_rate(0.5, 3, 10, 0, decay=0.5) == pytest.approx(0.5 * math.exp(-1.5))
    assert pdarts.skip_dropout_rate(0.0, 5, 10, 3) == 0.0
    for kwargs in ({"epoch": 25}, {"warmup_epochs": 26}, {"initial": 1.5}, {"decay": -1.0}):
        args = {"initial": 0.3, "epoch": 0, "epochs": 25, "warmup_epochs": 10, **kwargs}
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}="):
            pdarts.skip_dropout_rate(**args)
