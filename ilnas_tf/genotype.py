"""The DARTS search-space layout and cell genotypes: definition, validation, derivation from
alphas and (de)serialization.

Layout shared by the supernet (``search_space``) and the evaluation networks (``network``):
the candidate ops ``PRIMITIVES``, the edge count of a cell (``num_cell_edges``), the positions
of the reduction cells (``reduction_layers``) and the stem width (``STEM_MULTIPLIER``).

A genotype describes a normal and a reduction cell. Each cell has ``steps`` intermediate nodes and
every node takes exactly two inputs, so a cell is a sequence of ``2 * steps`` ``(op_name, input)``
pairs: entries ``2 * i`` and ``2 * i + 1`` belong to node ``i``. Input ``0`` is ``c_{k-2}``, input
``1`` is ``c_{k-1}`` and input ``j >= 2`` is intermediate node ``j - 2``. The ``*_concat`` tuples
list which states (indices ``2 .. steps + 1``) are concatenated into the cell output.

This module is pure Python + numpy on purpose (no TensorFlow import) so it stays cheap to import.
"""

import ast
import dataclasses
import json
import numbers
import os

import numpy as np

from ilnas_tf import validation

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""Candidate operations of the DARTS search space, in the reference order."""

GENOTYPE_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
CELL_NAMES = ("normal", "reduce")
VALID_OPS = tuple(op for op in PRIMITIVES if op != "none")


STEM_MULTIPLIER = 3
"""The stem of every DARTS network outputs ``STEM_MULTIPLIER * channels`` channels."""


def num_cell_edges(steps=4):
    """Returns the number of mixed edges in a search cell with ``steps`` intermediate nodes.

    Node ``i`` has ``i + 2`` incoming edges, so this is ``sum(i + 2 for i in range(steps))``
    (14 for the default 4 steps). Edges are ordered node-major: node 0's edges from states
    0, 1, then node 1's from states 0, 1, 2, and so on.
    """
    return sum(i + 2 for i in range(steps))


def cell_steps(num_edges):
    """The intermediate nodes of a cell with ``num_edges`` edges (5 -> 2, 14 -> 4).

    Raises:
      ValueError: when no cell has that many edges (node ``j`` has ``2 + j``).
    """
    steps, edges = 0, 0
    while edges < num_edges:
        edges += 2 + steps
        steps += 1
    if edges != num_edges or steps == 0:
        raise ValueError(
            f"{num_edges} edges is no cell's edge count (2, 5, 9, 14, ...: node j has 2 + j "
            "incoming edges); pass edge_names to label other tables"
        )
    return steps


def edge_label(node, source):
    """``n<node>←<input>``: the edge of intermediate node ``node`` from input ``source`` (0 is
    ``c_{k-2}``, 1 is ``c_{k-1}``, ``j >= 2`` is node ``n<j-2>``)."""
    name = ("c_{k-2}", "c_{k-1}")[source] if source < 2 else f"n{source - 2}"
    return f"n{node}←{name}"


def edge_labels(steps=4):
    """Every edge's ``edge_label`` in cell order (node by node, its inputs in order)."""
    return [edge_label(node, source) for node in range(steps) for source in range(2 + node)]


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the two reduction cells of a ``layers``-cell network: ``layers // 3`` and
    ``2 * layers // 3``."""
    return (layers // 3, 2 * layers // 3)


def softmax(logits):
    """Softmax over the last axis of an array (NumPy, float64), e.g. ``[edges, ops]`` alphas."""
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def check_cell_edge_primitives(name, value, primitives=PRIMITIVES, steps=4):
    """Validates one cell's per-edge candidate-op subsets.

    Args:
        name: The argument's name in messages.
        value: ``None`` (every edge has all ``primitives``) or a sequence of
            ``num_cell_edges(steps)`` sequences of op names, one per edge (node-major edge
            order): unique names from ``primitives``, not only ``'none'``, the same number on
            every edge.
        primitives: The op names an edge may use.
        steps: Intermediate nodes per cell.

    Returns:
        ``None`` or a tuple of tuples of str.

    Raises:
        ValueError: In the format of :mod:`ilnas_tf.validation`.
    """
    if value is None:
        return None
    cell = validation.check_sequence(name, value, length=num_cell_edges(steps))
    subsets = []
    for e, subset in enumerate(cell):
        subset = validation.check_sequence(f"{name}[{e}]", subset, min_length=1)
        if (
            not all(isinstance(p, str) and p in primitives for p in subset)
            or len(set(subset)) != len(subset)
            or all(p == "none" for p in subset)
        ):
            validation.fail(
                f"{name}[{e}]", subset, f"unique op names from {list(primitives)}, not only 'none'"
            )
        subsets.append(tuple(subset))
    if len({len(subset) for subset in subsets}) != 1:
        validation.fail(name, value, "the same number of ops on every edge")
    return tuple(subsets)


def check_edge_primitives(name, value, primitives=PRIMITIVES, steps=4):
    """Validates per-edge candidate-op subsets of both cells (P-DARTS prunes the candidates
    between its stages).

    Args:
        name: The argument's name in messages.
        value: ``None`` (every edge has all ``primitives``) or a pair ``(normal, reduce)`` of
            cells' subsets (see :func:`check_cell_edge_primitives`), with the same number of ops
            on every edge of both cells.
        primitives: The op names an edge may use.
        steps: Intermediate nodes per cell.

    Returns:
        ``None`` or ``(normal, reduce)`` as tuples of tuples of str.

    Raises:
        ValueError: In the format of :mod:`ilnas_tf.validation`.
    """
    if value is None:
        return None
    cells = validation.check_sequence(name, value, length=2)
    result = tuple(
        check_cell_edge_primitives(f"{name}[{i}]", cell, primitives, steps)
        for i, cell in enumerate(cells)
    )
    if len(result[0][0]) != len(result[1][0]):
        validation.fail(name, value, "the same number of ops on every edge of both cells")
    return result


def _as_sequence(value, where):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, range)):
        return tuple(value)
    raise ValueError(f"{where}: expected a list or tuple, got {type(value).__name__} {value!r}")


def _as_int(value, where):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{where}: expected an int, got {type(value).__name__} {value!r}")


def _coerce_cell(name, value):
    entries = _as_sequence(value, name)
    cell = []
    for j, entry in enumerate(entries):
        where = f"{name}[{j}]"
        if isinstance(entry, np.ndarray) or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"{where}: expected an (op_name, input_index) pair, got {entry!r}")
        op_name, input_index = entry
        if op_name not in PRIMITIVES:
            raise ValueError(f"{where}: unknown op {op_name!r}; expected one of {VALID_OPS}")
        if op_name == "none":
            raise ValueError(
                f"{where}: op 'none' is not allowed in a cell; expected one of {VALID_OPS}"
            )
        input_index = _as_int(input_index, f"{where} input index")
        node = j // 2
        if not 0 <= input_index <= node + 1:
            raise ValueError(
                f"{where}: input index {input_index} out of range for node {node}; "
                f"expected an int in [0, {node + 1}]"
            )
        cell.append((op_name, input_index))
    return tuple(cell)


def _coerce_concat(name, value, steps):
    concat = tuple(_as_int(c, f"{name}[{i}]") for i, c in enumerate(_as_sequence(value, name)))
    if not concat:
        raise ValueError(f"{name}: must not be empty; expected ints in [2, {steps + 1}]")
    for index in concat:
        if not 2 <= index <= steps + 1:
            raise ValueError(
                f"{name}: index {index} out of range; expected unique ints in [2, {steps + 1}]"
            )
    duplicates = sorted({c for c in concat if concat.count(c) > 1})
    if duplicates:
        raise ValueError(f"{name}: duplicate indices {duplicates} in {list(concat)}")
    return concat


@dataclasses.dataclass(frozen=True, repr=False)
class Genotype:
    """An immutable, validated pair of discrete cells (normal and reduction).

    Lists are coerced to tuples on construction, so ``Genotype`` values are hashable and compare
    equal regardless of how they were built. ``str()`` / ``repr()`` give the reference DARTS text
    form, which :meth:`from_string` parses back without ``eval``.

    Attributes:
        normal: ``2 * steps`` ``(op_name, input_index)`` pairs of the normal cell.
        normal_concat: Indices of the states concatenated into the normal cell output.
        reduce: ``2 * steps`` ``(op_name, input_index)`` pairs of the reduction cell.
        reduce_concat: Indices of the states concatenated into the reduction cell output.

    Raises:
        ValueError: If any entry is malformed (unknown or ``'none'`` op, input index out of range
            for its node, wrong edge count, bad concat).
    """

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple

    def __post_init__(self):
        normal = _coerce_cell("normal", self.normal)
        reduce = _coerce_cell("reduce", self.reduce)
        for name, cell in (("normal", normal), ("reduce", reduce)):
            if not cell or len(cell) % 2:
                raise ValueError(
                    f"{name} has {len(cell)} entries; expected an even, non-zero number "
                    "(2 per node, e.g. 8 for 4 steps)"
                )
        if len(normal) != len(reduce):
            raise ValueError(
                f"normal has {len(normal)} entries but reduce has {len(reduce)}; "
                "expected the same number (2 * steps) in both cells"
            )
        steps = len(normal) // 2
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "reduce", reduce)
        object.__setattr__(
            self, "normal_concat", _coerce_concat("normal_concat", self.normal_concat, steps)
        )
        object.__setattr__(
            self, "reduce_concat", _coerce_concat("reduce_concat", self.reduce_concat, steps)
        )

    @property
    def steps(self):
        """Number of intermediate nodes per cell."""
        return len(self.normal) // 2

    def to_string(self):
        """Returns the reference text form ``Genotype(normal=[('sep_conv_3x3', 1), ...], ...)``."""
        parts = [f"{field}={list(getattr(self, field))!r}" for field in GENOTYPE_FIELDS]
        return f"Genotype({', '.join(parts)})"

    __str__ = to_string
    __repr__ = to_string

    @classmethod
    def from_string(cls, text):
        """Parses the text form produced by :meth:`to_string` (or the reference DARTS logs).

        Only a single call ``Genotype(...)`` (optionally qualified, e.g. ``genotypes.Genotype``)
        with literal list/tuple arguments (or ``range(a, b)`` for concat) is accepted. Nothing is
        evaluated: the text is parsed with :mod:`ast` and arguments go through
        :func:`ast.literal_eval`.

        Args:
            text: The genotype text.

        Returns:
            The parsed :class:`Genotype`.

        Raises:
            ValueError: If the text is not a valid genotype expression.
        """
        if not isinstance(text, str):
            raise ValueError(f"expected genotype text as a str, got {text!r}")  # noqa: TRY004
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
            raise ValueError(f"cannot parse genotype text {text!r}: {error}") from None
        call = tree.body
        func = call.func if isinstance(call, ast.Call) else None
        is_genotype = (isinstance(func, ast.Name) and func.id == "Genotype") or (
            isinstance(func, ast.Attribute) and func.attr == "Genotype"
        )
        if not is_genotype:
            raise ValueError(f"expected a single call Genotype(...), got {ast.unparse(call)!r}")
        if len(call.args) > len(GENOTYPE_FIELDS):
            raise ValueError(f"too many positional arguments in {text!r}")
        named_nodes = list(zip(GENOTYPE_FIELDS, call.args))
        for keyword in call.keywords:
            if keyword.arg is None:
                raise ValueError(f"'**' arguments are not allowed in genotype text: {text!r}")
            named_nodes.append((keyword.arg, keyword.value))
        values = {}
        for name, node in named_nodes:
            if name not in GENOTYPE_FIELDS:
                raise ValueError(f"unknown field {name!r}; expected {list(GENOTYPE_FIELDS)}")
            if name in values:
                raise ValueError(f"field {name!r} given more than once")
            values[name] = _literal_argument(name, node)
        missing = [name for name in GENOTYPE_FIELDS if name not in values]
        if missing:
            raise ValueError(f"missing field(s) {missing} in genotype text")
        return cls(**values)

    def to_dict(self):
        """Returns a JSON-compatible dict with list-valued cells and concats."""
        return {
            "normal": [[op, index] for op, index in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, index] for op, index in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data):
        """Builds a :class:`Genotype` from a dict with exactly the four genotype keys.

        Raises:
            ValueError: If ``data`` is not a dict, has missing or extra keys, or is invalid.
        """
        if not isinstance(data, dict):
            message = f"expected a dict with keys {list(GENOTYPE_FIELDS)}, got {data!r}"
            raise ValueError(message)  # noqa: TRY004
        missing = [key for key in GENOTYPE_FIELDS if key not in data]
        extra = sorted(str(key) for key in data if key not in GENOTYPE_FIELDS)
        if missing or extra:
            raise ValueError(
                f"genotype dict keys do not match: missing {missing}, unexpected {extra}; "
                f"expected exactly {list(GENOTYPE_FIELDS)}"
            )
        return cls(**{key: data[key] for key in GENOTYPE_FIELDS})

    def to_json(self):
        """Returns the JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text):
        """Parses JSON text as written by :meth:`to_json`.

        Raises:
            ValueError: If the text is not valid JSON or not a valid genotype dict.
        """
        try:
            data = json.loads(text)
        except (ValueError, TypeError, RecursionError) as error:
            raise ValueError(f"invalid genotype JSON: {error}") from None
        return cls.from_dict(data)


_MAX_RANGE_LENGTH = 64


def _literal_range(name, node):
    # ``range(2, 6)`` concats, as printed by the reference DARTS search logs.
    text = ast.unparse(node)
    int_args = all(isinstance(a, ast.Constant) and type(a.value) is int for a in node.args)
    if node.keywords or not int_args or not 1 <= len(node.args) <= 3:
        raise ValueError(f"{name}: expected range() of 1 to 3 int literals, got {text!r}")
    try:
        value = range(*(a.value for a in node.args))
    except ValueError:
        raise ValueError(f"{name}: invalid {text!r}") from None
    if len(value) > _MAX_RANGE_LENGTH:
        raise ValueError(f"{name}: {text!r} is too long for a concat")
    return value


def _literal_argument(name, node):
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Name) and func.id == "range":
        return _literal_range(name, node)
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{name}: expected a literal list, got {ast.unparse(node)!r}") from None
    if isinstance(value, (list, tuple)):
        return value
    raise ValueError(f"{name}: expected a literal list, got {value!r}")


def _derive_cell(name, alpha, edge_weight, edge_ops, steps):
    expected = (num_cell_edges(steps), len(edge_ops[0]))
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != expected:
        raise ValueError(f"{name} has shape {alpha.shape}; expected {expected}")
    if not np.all(np.isfinite(alpha)):
        raise ValueError(f"{name} contains non-finite values")
    weights = softmax(alpha)
    if edge_weight is not None:
        edge_weight = np.asarray(edge_weight, dtype=np.float64)
        if edge_weight.shape != (expected[0],):
            raise ValueError(
                f"edge weight for {name} has shape {edge_weight.shape}; expected ({expected[0]},)"
            )
        weights = weights * edge_weight[:, None]
    # Per edge: the columns of its ops other than 'none' (never part of a genotype).
    candidates = [[k for k, op in enumerate(ops) if op != "none"] for ops in edge_ops]
    gene = []
    start = 0
    for node in range(steps):
        node_weights = weights[start : start + node + 2]
        node_candidates = candidates[start : start + node + 2]

        def strength(j, w=node_weights, c=node_candidates):
            return max(w[j][k] for k in c[j])

        # Stable sort: equal strengths keep the lower input index first.
        ranked = sorted(range(node + 2), key=lambda j: -strength(j))
        for j in ranked[:2]:
            best = node_candidates[j][0]
            for k in node_candidates[j]:
                if node_weights[j][k] > node_weights[j][best]:
                    best = k
            gene.append((edge_ops[start + j][best], j))
        start += node + 2
    return gene


def derive_genotype(
    alpha_normal,
    alpha_reduce,
    *,
    primitives=PRIMITIVES,
    steps=4,
    multiplier=4,
    edge_weight_normal=None,
    edge_weight_reduce=None,
    edge_primitives=None,
):
    """Derives the discrete genotype from architecture logits, as the reference DARTS does.

    Each alpha is softmaxed over its last axis and, if given, each edge row is scaled by its edge
    weight (PC-DARTS edge normalization). For every node the incoming edges are ranked by their
    strongest non-``'none'`` op weight (stable sort, so ties keep the lower input index first);
    the top two are kept in ranked order, each with its first-argmax non-``'none'`` op.

    Args:
        alpha_normal: Logits of the normal cell, shape ``(num_cell_edges(steps), len(primitives))``.
            Anything ``np.asarray`` accepts (numpy arrays, TF tensors, lists).
        alpha_reduce: Logits of the reduction cell, same shape.
        primitives: Op names matching the alpha columns; ``'none'`` (if present) is excluded.
        steps: Number of intermediate nodes per cell.
        multiplier: Number of last states concatenated into the cell output.
        edge_weight_normal: Optional 1-D per-edge weights of length ``num_cell_edges(steps)``.
        edge_weight_reduce: Optional 1-D per-edge weights of length ``num_cell_edges(steps)``.
        edge_primitives: ``None`` (column ``j`` of every edge is ``primitives[j]``) or per-edge
            op subsets ``(normal, reduce)`` (see :func:`check_edge_primitives`): column ``j`` of
            edge ``e`` of the normal cell is ``edge_primitives[0][e][j]``; ``'none'`` is
            excluded per edge as above.

    Returns:
        The derived :class:`Genotype` with concat ``range(2 + steps - multiplier, steps + 2)``.

    Raises:
        ValueError: On bad shapes, non-finite values or invalid ``primitives``/``steps``/
            ``multiplier``.
    """
    primitives = tuple(primitives)
    if len(set(primitives)) != len(primitives) or not all(isinstance(p, str) for p in primitives):
        raise ValueError(f"primitives must be unique op names, got {primitives}")
    if not [p for p in primitives if p != "none"]:
        raise ValueError(f"primitives {primitives} contain no op other than 'none'")
    steps = _as_int(steps, "steps")
    multiplier = _as_int(multiplier, "multiplier")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 1 <= multiplier <= steps:
        raise ValueError(f"multiplier {multiplier} out of range; expected an int in [1, {steps}]")
    edge_primitives = check_edge_primitives("edge_primitives", edge_primitives, primitives, steps)
    if edge_primitives is None:
        edge_primitives = ((primitives,) * num_cell_edges(steps),) * 2
    normal_ops, reduce_ops = edge_primitives
    normal = _derive_cell("alpha_normal", alpha_normal, edge_weight_normal, normal_ops, steps)
    reduce = _derive_cell("alpha_reduce", alpha_reduce, edge_weight_reduce, reduce_ops, steps)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


_CONCAT = (2, 3, 4, 5)

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=_CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=_CONCAT,
)  # fmt: skip
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=_CONCAT,
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=_CONCAT,
)  # fmt: skip
DARTS = DARTS_V2
PC_DARTS = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=_CONCAT,
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=_CONCAT,
)  # fmt: skip
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    normal_concat=_CONCAT,
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    reduce_concat=_CONCAT,
)  # fmt: skip
PRDARTS = Genotype(
    normal=[("skip_connect", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
            ("dil_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_3x3", 4), ("dil_conv_3x3", 1)],
    normal_concat=_CONCAT,
    reduce=[("avg_pool_3x3", 0), ("dil_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("sep_conv_5x5", 1), ("dil_conv_3x3", 3), ("dil_conv_5x5", 4), ("dil_conv_5x5", 1)],
    reduce_concat=_CONCAT,
)  # fmt: skip

NAMED_GENOTYPES = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS,
    "PC_DARTS": PC_DARTS,
    "PDARTS": PDARTS,
    "PRDARTS": PRDARTS,
}
"""Published genotypes by (case-sensitive) name."""


def load_genotype(spec):
    """Resolves a genotype from a name, genotype text, a JSON file or a search directory.

    Args:
        spec: A :class:`Genotype` (returned as is); a key of :data:`NAMED_GENOTYPES`; genotype text
            starting with ``Genotype(``; a path to a JSON file written by
            :meth:`Genotype.to_json`; or a directory containing ``genotype.json``.

    Returns:
        The resolved :class:`Genotype`.

    Raises:
        ValueError: If ``spec`` matches none of the above, or the file is missing or invalid.
    """
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, str):
        if not spec.strip():
            raise ValueError(
                f"genotype {spec!r} is invalid: expected a genotype name "
                f"({', '.join(NAMED_GENOTYPES)}), genotype text, a JSON file or a search root_dir"
            )
        if spec in NAMED_GENOTYPES:
            return NAMED_GENOTYPES[spec]
        if spec.strip().startswith("Genotype("):
            return Genotype.from_string(spec)
    try:
        path = os.fspath(spec)
    except TypeError:
        raise ValueError(
            f"expected a genotype name or path, got {type(spec).__name__} {spec!r}"
        ) from None
    if os.path.isdir(path):
        path = os.path.join(path, "genotype.json")
    elif not os.path.exists(path):
        raise ValueError(
            f"{path!r} is neither a known genotype name ({list(NAMED_GENOTYPES)}) "
            "nor an existing JSON file or directory"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ValueError(f"cannot read genotype file {path!r}: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid genotype file {path!r}: not UTF-8 text ({error})") from None
    try:
        return Genotype.from_json(text)
    except ValueError as error:
        raise ValueError(f"invalid genotype file {path!r}: {error}") from None


def _dot_state_name(index):
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, str(index - 2))


def to_dot(genotype, cell="normal"):
    """Renders one cell of ``genotype`` as Graphviz dot text (same layout as DARTS' visualize.py).

    Args:
        genotype: The :class:`Genotype` to draw.
        cell: ``'normal'`` or ``'reduce'``.

    Returns:
        The dot source: inputs ``c_{k-2}``, ``c_{k-1}``, nodes ``0..steps-1`` and output ``c_{k}``,
        with op-labelled edges and unlabelled concat edges into ``c_{k}``.

    Raises:
        ValueError: If ``cell`` is not ``'normal'`` or ``'reduce'``.
    """
    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {list(CELL_NAMES)}")
    edges = getattr(genotype, cell)
    concat = getattr(genotype, f"{cell}_concat")
    lines = [
        f"digraph {cell} {{",
        "  rankdir=LR;",
        '  node [style=filled, shape=rect, align=center, fontsize=20, fontname="times"];',
        '  "c_{k-2}" [fillcolor=darkseagreen2];',
        '  "c_{k-1}" [fillcolor=darkseagreen2];',
    ]
    lines += [f'  "{node}" [fillcolor=lightblue];' for node in range(genotype.steps)]
    lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
    for j, (op_name, input_index) in enumerate(edges):
        source = _dot_state_name(input_index)
        lines.append(f'  "{source}" -> "{j // 2}" [label="{op_name}", fillcolor=gray];')
    lines += [f'  "{_dot_state_name(index)}" -> "c_{{k}}" [fillcolor=gray];' for index in concat]
    lines.append("}")
    return "\n".join(lines) + "\n"
