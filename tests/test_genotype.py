"""Tests for ilnas_tf.genotype (pure Python + numpy, no TensorFlow)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ilnas_tf import genotype as G
from ilnas_tf.genotype import (
    NAMED_GENOTYPES,
    PRIMITIVES,
    Genotype,
    derive_genotype,
    load_genotype,
    num_cell_edges,
    to_dot,
)

CONCAT = [2, 3, 4, 5]
EXPECTED_NAMED = {
    "DARTS_V1": (
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    ),
    "DARTS_V2": (
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    ),
    "PC_DARTS": (
        [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    ),
    "PDARTS": (
        [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
         ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    ),
    "PRDARTS": (
        [("skip_connect", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
         ("dil_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_3x3", 4), ("dil_conv_3x3", 1)],
        [("avg_pool_3x3", 0), ("dil_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
         ("sep_conv_5x5", 1), ("dil_conv_3x3", 3), ("dil_conv_5x5", 4), ("dil_conv_5x5", 1)],
    ),
}  # fmt: skip
EXPECTED_NAMED["DARTS"] = EXPECTED_NAMED["DARTS_V2"]

# Edge row offset of each node's first incoming edge (node i has i + 2 edges).
NODE_OFFSETS = (0, 2, 5, 9)


def alphas_from_genotype(genotype, cell):
    """Logits whose derivation gives back ``cell``: kept edges get a large logit on their op,
    the first-ranked edge of a node slightly larger than the second; other edges are uniform."""
    alpha = np.zeros((14, 8))
    for j, (op_name, input_index) in enumerate(getattr(genotype, cell)):
        node = j // 2
        alpha[NODE_OFFSETS[node] + input_index, PRIMITIVES.index(op_name)] = 10.0 - (j % 2)
    return alpha


def valid_kwargs(**overrides):
    kwargs = {
        "normal": list(G.DARTS_V2.normal),
        "normal_concat": list(CONCAT),
        "reduce": list(G.DARTS_V2.reduce),
        "reduce_concat": list(CONCAT),
    }
    kwargs.update(overrides)
    return kwargs


def replace_entry(cell, index, entry):
    cell = list(cell)
    cell[index] = entry
    return cell


def test_primitives_order():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    assert num_cell_edges() == 14
    assert num_cell_edges(5) == 20


# --------------------------------------------------------------------------- named genotypes


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMED))
def test_named_genotypes_match_published(name):
    normal, reduce = EXPECTED_NAMED[name]
    genotype = load_genotype(name)
    assert genotype is NAMED_GENOTYPES[name]
    assert genotype is getattr(G, name)
    assert genotype.normal == tuple(normal)
    assert genotype.reduce == tuple(reduce)
    assert genotype.normal_concat == (2, 3, 4, 5)
    assert genotype.reduce_concat == (2, 3, 4, 5)
    assert genotype.steps == 4
    assert genotype == Genotype(normal, CONCAT, reduce, CONCAT)


def test_named_genotype_set_and_aliases():
    assert set(NAMED_GENOTYPES) == {
        "DARTS_V1",
        "DARTS_V2",
        "DARTS",
        "PC_DARTS",
        "PDARTS",
        "PRDARTS",
    }
    assert G.DARTS is G.DARTS_V2
    assert G.DARTS_V1 != G.DARTS_V2


def test_load_genotype_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="darts_v2") as info:
        load_genotype("darts_v2")
    for name in NAMED_GENOTYPES:
        assert name in str(info.value)


# --------------------------------------------------------------------------- derive_genotype


def test_derive_reproduces_darts_v2():
    alpha_normal = alphas_from_genotype(G.DARTS_V2, "normal")
    alpha_reduce = alphas_from_genotype(G.DARTS_V2, "reduce")
    assert derive_genotype(alpha_normal, alpha_reduce) == G.DARTS_V2


@pytest.mark.parametrize("name", ["DARTS_V1", "PC_DARTS", "PDARTS", "PRDARTS"])
def test_derive_reproduces_other_named(name):
    genotype = NAMED_GENOTYPES[name]
    derived = derive_genotype(
        alphas_from_genotype(genotype, "normal").tolist(), alphas_from_genotype(genotype, "reduce")
    )
    assert derived == genotype


def test_derive_ranks_edges_by_strength_best_first():
    alpha = np.zeros((14, 8))
    # Node 0: edge from state 1 is stronger than from state 0 -> state 1 listed first.
    alpha[1, PRIMITIVES.index("sep_conv_5x5")] = 8.0
    alpha[0, PRIMITIVES.index("max_pool_3x3")] = 5.0
    # Node 3 (rows 9..13): strongest from state 4, then state 2; states 0,1,3 weaker.
    alpha[9 + 4, PRIMITIVES.index("dil_conv_5x5")] = 9.0
    alpha[9 + 2, PRIMITIVES.index("avg_pool_3x3")] = 7.0
    alpha[9 + 0, PRIMITIVES.index("skip_connect")] = 3.0
    alpha[9 + 3, PRIMITIVES.index("skip_connect")] = 2.0
    genotype = derive_genotype(alpha, alpha)
    assert genotype.normal[0:2] == (("sep_conv_5x5", 1), ("max_pool_3x3", 0))
    assert genotype.normal[6:8] == (("dil_conv_5x5", 4), ("avg_pool_3x3", 2))
    assert genotype.reduce == genotype.normal


def test_derive_edge_ties_keep_lower_input_index_first():
    # All-zero logits: every edge and op ties.
    genotype = derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)))
    # Ties between edges -> inputs 0 and 1 in that order; ties between ops -> lowest non-none index.
    expected = [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    assert list(genotype.normal) == expected
    assert list(genotype.reduce) == expected

    alpha = np.zeros((14, 8))
    # Node 2 (rows 5..8): states 3 and 1 tie at the top, state 2 weaker; 1 must rank before 3.
    alpha[5 + 3, PRIMITIVES.index("sep_conv_3x3")] = 6.0
    alpha[5 + 1, PRIMITIVES.index("sep_conv_3x3")] = 6.0
    alpha[5 + 2, PRIMITIVES.index("sep_conv_3x3")] = 4.0
    genotype = derive_genotype(alpha, np.zeros((14, 8)))
    assert genotype.normal[4:6] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 3))


def test_derive_op_ties_pick_lower_primitive_index():
    alpha = np.zeros((14, 8))
    alpha[0, PRIMITIVES.index("dil_conv_3x3")] = 5.0
    alpha[0, PRIMITIVES.index("sep_conv_3x3")] = 5.0
    alpha[0, PRIMITIVES.index("dil_conv_5x5")] = 5.0
    alpha[1, PRIMITIVES.index("skip_connect")] = 1.0
    genotype = derive_genotype(alpha, alpha)
    assert genotype.normal[0] == ("sep_conv_3x3", 0)
    assert genotype.normal[1] == ("skip_connect", 1)


def test_derive_ignores_none_op():
    alpha = np.zeros((14, 8))
    # Edge from state 0 of node 0 is dominated by 'none' but its best real op is avg_pool.
    alpha[0, PRIMITIVES.index("none")] = 50.0
    alpha[0, PRIMITIVES.index("avg_pool_3x3")] = 2.0
    # Edge from state 1 has a moderate real op; softmax makes its non-none max far larger.
    alpha[1, PRIMITIVES.index("dil_conv_3x3")] = 2.0
    # Node 1: the strongest 'none' anywhere must not make state 2 win.
    alpha[2 + 2, PRIMITIVES.index("none")] = 50.0
    alpha[2 + 0, PRIMITIVES.index("sep_conv_5x5")] = 3.0
    alpha[2 + 1, PRIMITIVES.index("skip_connect")] = 1.0
    genotype = derive_genotype(alpha, alpha)
    assert genotype.normal[0:2] == (("dil_conv_3x3", 1), ("avg_pool_3x3", 0))
    assert genotype.normal[2:4] == (("sep_conv_5x5", 0), ("skip_connect", 1))
    assert all(op != "none" for op, _ in genotype.normal)


def test_derive_edge_weights_change_ranking():
    alpha = np.zeros((14, 8))
    alpha[0, PRIMITIVES.index("sep_conv_3x3")] = 5.0
    alpha[1, PRIMITIVES.index("sep_conv_3x3")] = 4.0
    alpha[2, PRIMITIVES.index("skip_connect")] = 4.0
    plain = derive_genotype(alpha, alpha)
    assert plain.normal[0:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    edge_weight = np.ones(14)
    edge_weight[0] = 0.1
    weighted = derive_genotype(alpha, alpha, edge_weight_normal=edge_weight)
    assert weighted.normal[0:2] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 0))
    assert weighted.reduce == plain.reduce
    # Node 1 (rows 2..4): down-weighting state 0 drops it from the top two.
    edge_weight = np.ones(14)
    edge_weight[2] = 0.0
    weighted = derive_genotype(alpha, alpha, edge_weight_reduce=edge_weight)
    assert weighted.reduce[2:4] == (("max_pool_3x3", 1), ("max_pool_3x3", 2))
    assert plain.reduce[2:4] == (("skip_connect", 0), ("max_pool_3x3", 1))


def test_derive_custom_primitives_and_steps():
    primitives = ("skip_connect", "sep_conv_3x3")  # No 'none': nothing is excluded.
    alpha = np.zeros((5, 2))  # steps=2 -> 2 + 3 edges.
    alpha[1, 1] = 3.0
    alpha[2 + 2, 0] = 3.0
    alpha[2 + 0, 1] = 1.0
    genotype = derive_genotype(alpha, alpha, primitives=primitives, steps=2, multiplier=2)
    assert genotype.normal == (("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 2),
                               ("sep_conv_3x3", 0))  # fmt: skip
    assert genotype.normal_concat == (2, 3)
    assert genotype.steps == 2
    genotype = derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)), multiplier=2)
    assert genotype.normal_concat == (4, 5)


@pytest.mark.parametrize("shape", [(14, 7), (13, 8), (14,), (2, 14, 8)])
def test_derive_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"alpha_normal has shape") as info:
        derive_genotype(np.zeros(shape), np.zeros((14, 8)))
    assert str(shape) in str(info.value)
    assert "(14, 8)" in str(info.value)
    with pytest.raises(ValueError, match=r"alpha_reduce has shape"):
        derive_genotype(np.zeros((14, 8)), np.zeros(shape))


def test_derive_rejects_bad_edge_weight_and_values():
    with pytest.raises(ValueError, match=r"\(13,\)"):
        derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)), edge_weight_normal=np.ones(13))
    with pytest.raises(ValueError, match="non-finite"):
        derive_genotype(np.full((14, 8), np.nan), np.zeros((14, 8)))
    with pytest.raises(ValueError, match="multiplier 5"):
        derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)), multiplier=5)


# --------------------------------------------------------------------------- validation


def test_constructor_coerces_to_tuples_and_is_hashable():
    genotype = Genotype(**valid_kwargs())
    assert isinstance(genotype.normal, tuple)
    assert all(isinstance(entry, tuple) for entry in genotype.normal)
    assert genotype.normal_concat == (2, 3, 4, 5)
    assert genotype == G.DARTS_V2
    assert hash(genotype) == hash(G.DARTS_V2)
    assert Genotype(**valid_kwargs(normal_concat=range(2, 6))) == G.DARTS_V2
    with pytest.raises(AttributeError):
        genotype.normal = ()


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (
            valid_kwargs(reduce=replace_entry(G.DARTS_V2.reduce, 3, ("conv_9x9", 1))),
            ["reduce[3]", "unknown op 'conv_9x9'", "sep_conv_3x3"],
        ),
        (
            valid_kwargs(normal=replace_entry(G.DARTS_V2.normal, 5, ("none", 0))),
            ["normal[5]", "'none'"],
        ),
        (
            valid_kwargs(normal=replace_entry(G.DARTS_V2.normal, 2, ("sep_conv_3x3", 3))),
            ["normal[2]", "input index 3", "node 1", "[0, 2]"],
        ),
        (
            valid_kwargs(reduce=replace_entry(G.DARTS_V2.reduce, 0, ("sep_conv_3x3", -1))),
            ["reduce[0]", "input index -1", "[0, 1]"],
        ),
        (
            valid_kwargs(normal=replace_entry(G.DARTS_V2.normal, 1, ("sep_conv_3x3", "1"))),
            ["normal[1]", "'1'", "int"],
        ),
        (
            valid_kwargs(normal=replace_entry(G.DARTS_V2.normal, 4, "sep_conv_3x3")),
            ["normal[4]", "pair"],
        ),
        (
            valid_kwargs(normal=replace_entry(G.DARTS_V2.normal, 4, ("sep_conv_3x3", 1, 2))),
            ["normal[4]", "pair"],
        ),
        (valid_kwargs(normal=G.DARTS_V2.normal[:7]), ["normal has 7 entries"]),
        (valid_kwargs(normal=(), reduce=()), ["normal has 0 entries"]),
        (valid_kwargs(reduce=G.DARTS_V2.reduce[:6]), ["normal has 8", "reduce has 6"]),
        (valid_kwargs(normal_concat=[2, 3, 4, 6]), ["normal_concat", "index 6", "[2, 5]"]),
        (valid_kwargs(reduce_concat=[1, 2]), ["reduce_concat", "index 1"]),
        (valid_kwargs(reduce_concat=[2, 3, 3]), ["reduce_concat", "duplicate", "[3]"]),
        (valid_kwargs(normal_concat=[]), ["normal_concat", "empty"]),
        (valid_kwargs(normal_concat=[2, 3.0]), ["normal_concat[1]", "3.0"]),
        (valid_kwargs(normal_concat="2345"), ["normal_concat", "'2345'"]),
    ],
)
def test_validation_errors_name_the_bad_value(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        Genotype(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


# --------------------------------------------------------------------------- text and JSON


def test_string_format_matches_reference_repr():
    expected = (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])"
    )
    assert str(G.DARTS_V2) == expected
    assert G.DARTS_V2.to_string() == expected
    assert repr(G.DARTS_V2) == expected


@pytest.mark.parametrize("name", sorted(NAMED_GENOTYPES))
def test_string_and_json_round_trips(name):
    genotype = NAMED_GENOTYPES[name]
    assert Genotype.from_string(str(genotype)) == genotype
    assert Genotype.from_json(genotype.to_json()) == genotype
    assert Genotype.from_dict(genotype.to_dict()) == genotype
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype
    assert str(Genotype.from_string(str(genotype))) == str(genotype)


def test_json_format():
    data = json.loads(G.DARTS_V2.to_json())
    assert list(data) == ["normal", "normal_concat", "reduce", "reduce_concat"]
    assert data["normal"][0] == ["sep_conv_3x3", 0]
    assert data["normal"][7] == ["dil_conv_3x3", 2]
    assert data["reduce_concat"] == [2, 3, 4, 5]
    assert G.DARTS_V2.to_json().startswith('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]')


def test_from_string_accepts_reference_variants():
    text = (
        "genotypes.Genotype(\n  normal=" + repr(list(G.PC_DARTS.normal)) + ",\n"
        "  normal_concat=range(2, 6),\n  reduce=" + repr(tuple(G.PC_DARTS.reduce)) + ",\n"
        "  reduce_concat=range(2, 6),\n)\n"
    )
    assert Genotype.from_string(text) == G.PC_DARTS
    normal, reduce = list(G.PDARTS.normal), list(G.PDARTS.reduce)
    positional = f"Genotype({normal!r}, [2, 3, 4, 5], {reduce!r}, [2, 3, 4, 5])"
    assert Genotype.from_string(positional) == G.PDARTS


def test_from_string_rejects_code_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        "__import__('os').system('x')",
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        (
            f"Genotype(normal=__import__('pathlib').Path({str(marker)!r}).touch(),"
            " normal_concat=[2], reduce=[], reduce_concat=[2])"
        ),
        (
            f"Genotype(normal=[], normal_concat=range(__import__('pathlib').Path({str(marker)!r})"
            ".touch()), reduce=[], reduce_concat=[2])"
        ),
    ]
    for payload in payloads:
        with pytest.raises(ValueError) as info:
            Genotype.from_string(payload)
        assert "__import__" in str(info.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="system"):
        Genotype.from_string("__import__('os').system('x')")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Genotype(normal=[", "cannot parse"),
        ("[('sep_conv_3x3', 0)]", "expected a single call Genotype"),
        ("Namedtuple(normal=[])", "'Namedtuple(normal=[])'"),
        ("Genotype(normal=[], normal_concat=[2], reduce=[])", "missing field(s) ['reduce_concat']"),
        (str(G.DARTS_V2)[:-1] + ", extra=[1])", "unknown field 'extra'"),
        (str(G.DARTS_V2)[:-1] + ", normal=[])", "'normal' given more than once"),
        (str(G.DARTS_V2).replace("normal_concat=[2, 3, 4, 5]", "normal_concat=5"), "got 5"),
        (str(G.DARTS_V2).replace("'dil_conv_3x3', 2", "'dil_conv_3x3', 7"), "input index 7"),
        ("x = 1", "cannot parse"),
        ("Genotype(normal=[], normal_concat=range(), reduce=[], reduce_concat=[])", "range()"),
        ("Genotype(normal=[], normal_concat=range(2, 6, 0), reduce=[], reduce_concat=[])", "0)"),
        ("Genotype(normal=[], normal_concat=range(10**9), reduce=[], reduce_concat=[])", "10 ** 9"),
        (
            "Genotype(normal=[], normal_concat=range(999999999), reduce=[], reduce_concat=[])",
            "long",
        ),
        ("Genotype(**{'normal': []})", "'**'"),
        ("Genotype([], [], [], [], [])", "too many positional"),
    ],
)
def test_from_string_rejects_malformed_text(text, fragment):
    with pytest.raises(ValueError) as info:
        Genotype.from_string(text)
    assert fragment in str(info.value)


def test_from_json_and_dict_errors():
    data = G.DARTS_V2.to_dict()
    del data["reduce_concat"]
    data["bogus"] = 1
    with pytest.raises(ValueError) as info:
        Genotype.from_dict(data)
    assert "reduce_concat" in str(info.value)
    assert "bogus" in str(info.value)
    with pytest.raises(ValueError, match="invalid genotype JSON"):
        Genotype.from_json("{not json")
    with pytest.raises(ValueError, match="expected a dict"):
        Genotype.from_json("[1, 2]")
    bad = G.DARTS_V2.to_dict()
    bad["normal"][0] = ["conv_9x9", 0]
    with pytest.raises(ValueError, match="conv_9x9"):
        Genotype.from_json(json.dumps(bad))


# --------------------------------------------------------------------------- load_genotype


def test_load_genotype_by_name_text_and_instance():
    assert load_genotype("PC_DARTS") is G.PC_DARTS
    assert load_genotype(G.PDARTS) is G.PDARTS
    assert load_genotype(str(G.PRDARTS)) == G.PRDARTS


def test_load_genotype_from_json_file_and_directory(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(G.PDARTS.to_json())
    assert load_genotype(str(path)) == G.PDARTS
    assert load_genotype(path) == G.PDARTS
    root_dir = tmp_path / "search_run"
    root_dir.mkdir()
    (root_dir / "genotype.json").write_text(G.PC_DARTS.to_json())
    assert load_genotype(str(root_dir)) == G.PC_DARTS


def test_load_genotype_errors(tmp_path):
    with pytest.raises(ValueError) as info:
        load_genotype("NOT_A_GENOTYPE")
    assert "NOT_A_GENOTYPE" in str(info.value)
    assert "DARTS_V2" in str(info.value)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError) as info:
        load_genotype(empty_dir)
    assert str(empty_dir / "genotype.json") in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError) as info:
        load_genotype(bad)
    assert str(bad) in str(info.value)
    assert "invalid genotype JSON" in str(info.value)
    with pytest.raises(ValueError, match="got int 3"):
        load_genotype(3)


# --------------------------------------------------------------------------- to_dot


@pytest.mark.parametrize("cell", ["normal", "reduce"])
def test_to_dot_contains_every_edge(cell):
    genotype = G.PDARTS
    dot = to_dot(genotype, cell)
    assert dot.startswith(f"digraph {cell} {{")
    assert dot.rstrip().endswith("}")
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for j, (op_name, input_index) in enumerate(getattr(genotype, cell)):
        source = names.get(input_index, str(input_index - 2))
        assert f'"{source}" -> "{j // 2}" [label="{op_name}"' in dot
    for index in getattr(genotype, f"{cell}_concat"):
        assert f'"{index - 2}" -> "c_{{k}}"' in dot
    assert dot.count("label=") == 8


def test_to_dot_rejects_unknown_cell():
    with pytest.raises(ValueError, match="'reduction'"):
        to_dot(G.DARTS_V2, "reduction")


def test_module_is_importable_without_tensorflow():
    # Load genotype.py on its own (bypassing the package __init__) in a fresh interpreter.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('genotype', {G.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.DARTS_V2.steps == 4\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- helpers, subsets


def test_layout_helpers():
    assert G.reduction_layers(8) == (2, 5) and G.reduction_layers(20) == (6, 13)
    assert G.STEM_MULTIPLIER == 3
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    np.testing.assert_allclose(G.softmax(logits), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-15)
    assert G.softmax(np.float32([[1.0, 2.0]])).dtype == np.float64


@pytest.mark.parametrize("seed", range(4))
def test_derive_with_edge_subsets_equals_full_with_absent_ops_impossible(seed):
    """Subset columns scattered into full alphas, absent ops at -1000 (softmax weight exactly 0
    in float64): the same genotype."""
    rng = np.random.default_rng(seed)
    subsets, alphas, full = [], [], []
    for _ in range(2):
        cell = tuple(
            tuple(str(p) for p in rng.choice(PRIMITIVES, 3, replace=False)) for _ in range(14)
        )
        alpha = rng.normal(size=(14, 3))
        scattered = np.full((14, 8), -1000.0)
        for e, names in enumerate(cell):
            for j, name in enumerate(names):
                scattered[e, PRIMITIVES.index(name)] = alpha[e, j]
        subsets.append(cell)
        alphas.append(alpha)
        full.append(scattered)
    derived = derive_genotype(*alphas, edge_primitives=tuple(subsets))
    assert derived == derive_genotype(*full)
    # Columns are op names of their own edge: derived ops come from that edge's subset.
    for cell_name, cell in (("normal", subsets[0]), ("reduce", subsets[1])):
        starts = [0, 2, 5, 9]
        for k, (op, source) in enumerate(getattr(derived, cell_name)):
            assert op in cell[starts[k // 2] + source] and op != "none"


def test_derive_with_edge_subsets_rejects_bad_subsets():
    good = tuple(("none", "skip_connect") for _ in range(14))
    with pytest.raises(ValueError, match=r"alpha_normal has shape \(14, 8\); expected \(14, 2\)"):
        derive_genotype(np.zeros((14, 8)), np.zeros((14, 2)), edge_primitives=(good, good))
    with pytest.raises(ValueError, match=r"edge_primitives\[1\]=.* is invalid"):
        derive_genotype(np.zeros((14, 2)), np.zeros((14, 2)), edge_primitives=(good, good[:3]))
