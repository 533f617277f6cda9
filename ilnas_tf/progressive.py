"""P-DARTS' progressive search: stages of deeper supernets over fewer candidate ops.

Chen et al., 2019, "Progressive Differentiable Architecture Search: Bridging the Depth Gap
between Search and Evaluation" (reference code chenxin061/pdarts). A progressive search is a
sequence of ordinary searches (``ilnas_tf.search.run_search``'s one-stage run, with K learners
and M rounds of interleaving learning as configured), stage ``s`` over a supernet of
``layers + add_layers[s]`` cells and ``channels + add_channels[s]`` channels whose edges hold
only the ops the previous stage kept:

* after stage ``s`` every edge keeps its ``ops_kept[s]`` ops of largest softmax weight
  (``pdarts.prune_edge_primitives``; the last stage's 1 op, ``'none'`` excluded, is the final
  derivation ``pdarts.derive_genotype``);
* every stage starts from freshly initialised weights, alphas and optimizers, as the reference
  does (it builds a new network per stage; nothing is carried but the surviving ops), with its
  own weight-only warm-up epochs and its own cosine learning-rate schedule;
* a dropout on the stride-1 skip-connects (``ops.skip_dropout``) starts at
  ``skip_dropout[s]`` and follows ``pdarts.skip_dropout_rate``;
* after the last stage the genotype keeps at most ``skip_limit`` skip-connects in the normal
  cell (``pdarts.skip_limited_genotypes``); the genotypes of every limit from ``2 * nodes``
  (no limit) down to 0 are written too.

Layout of ``root_dir`` (on top of the run record of ``run_dir``)::

    stages/stage_1/ ...          stage 1's search directory (``search_loop``'s layout:
    stages/stage_2/ ...          checkpoints, summaries, genotypes, results.json ...)
    genotypes/skip_limit_L.json  the final genotype with at most L skip-connects (and .dot)
    genotype.json, genotype.dot  the final genotype at ``skip_limit``
    results.json                 the final results (below)

A stage is complete once its ``results.json`` exists (it holds the stage's final alphas and
its search space); a rerun skips complete stages, derives the next stage's search space from
the last complete one and resumes the stage in progress from its checkpoints. Each stage's data
streams continue where the previous stage's stopped (a stage's batches depend only on the
seed, the stream and the global step), so in deterministic mode a killed and resumed run ends
with the genotype of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

import gin
from ilnas_tf import genotype as genotype_lib
from ilnas_tf import pdarts, run_dir, validation

STAGES_DIR = "stages"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    """The stages of a progressive (P-DARTS) search; the reference's CIFAR-10 run by default.

    Attributes:
      ops_kept: ops each edge keeps after each stage (the reference's ``num_to_keep``
        [5, 3, 1]); its length is the number of stages, decreasing, the last 1.
      add_layers: cells added to ``run_search.layers`` in each stage (the README's 0, 6, 12:
        5, 11 and 17 cells).
      add_channels: channels added to ``run_search.channels`` in each stage (``add_width``;
        0, 0, 0).
      skip_dropout: each stage's initial dropout rate on the stride-1 skip-connects (the
        README's CIFAR-10 command: 0.1, 0.4, 0.7; the paper's CIFAR-100 rates are 0.1, 0.2,
        0.3, ``gin/pdarts_cifar100.gin``).
      skip_dropout_decay: the rate decays as ``rate * exp(-decay * (epoch - warm-up))`` after
        a stage's warm-up (0.2).
      skip_limit: skip-connects allowed in the final normal cell (the authors recommend 2).
    """

    ops_kept: tuple = (5, 3, 1)
    add_layers: tuple = (0, 6, 12)
    add_channels: tuple = (0, 0, 0)
    skip_dropout: tuple = (0.1, 0.4, 0.7)
    skip_dropout_decay: float = 0.2
    skip_limit: int = 2

    @property
    def num_stages(self):
        return len(self.ops_kept)

    def checked(self, num_ops, nodes):
        """A copy with tuples of ints / floats; ValueError naming the first bad field."""
        name = "ProgressiveSchedule"
        kept = validation.check_sequence(
            f"{name}.ops_kept", self.ops_kept, min_length=1,
            item=lambda n, v: validation.check_int(n, v, 1, num_ops - 1),
        )  # fmt: skip
        if any(a <= b for a, b in zip(kept, kept[1:])) or kept[-1] != 1:
            validation.fail(
                f"{name}.ops_kept", self.ops_kept,
                f"strictly decreasing op counts below {num_ops} ending with 1 (the last stage's "
                "survivor is the genotype's op)",
            )  # fmt: skip
        stages = len(kept)

        def per_stage(field, item):
            return validation.check_sequence(
                f"{name}.{field}", getattr(self, field), length=stages, item=item
            )

        return dataclasses.replace(
            self,
            ops_kept=tuple(kept),
            add_layers=tuple(per_stage("add_layers", lambda n, v: validation.check_int(n, v, 0))),
            add_channels=tuple(
                per_stage("add_channels", lambda n, v: validation.check_int(n, v, 0))
            ),
            skip_dropout=tuple(
                float(r)
                for r in per_stage(
                    "skip_dropout",
                    _check_rate,
                )
            ),
            skip_dropout_decay=validation.check_number(
                f"{name}.skip_dropout_decay", self.skip_dropout_decay, 0.0
            ),
            skip_limit=validation.check_int(f"{name}.skip_limit", self.skip_limit, 0, 2 * nodes),
        )

    @property
    def uses_skip_dropout(self):
        return any(rate > 0 for rate in self.skip_dropout)


def _check_rate(name, value):
    rate = validation.check_number(name, value, 0.0)
    if rate >= 1.0:
        validation.fail(name, value, "a dropout rate in [0, 1)")
    return rate


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a progressive search, as ``run_search`` builds and runs it.

    Attributes:
      index: 0-based stage number.
      root_dir: the stage's search directory.
      channels, layers: the stage's supernet.
      edge_primitives: ``None`` (every op on every edge) or per-edge op subsets ``(normal,
        reduce)`` (``genotype.check_edge_primitives``).
      skip_dropout: the stage's initial skip-connect dropout rate.
      first_step: global steps of the earlier stages (where the stage's data streams start).
    """

    index: int
    root_dir: str
    channels: int
    layers: int
    edge_primitives: tuple | None
    skip_dropout: float
    first_step: int


def stage_dir(root_dir, index):
    return os.path.join(root_dir, STAGES_DIR, f"stage_{index + 1}")


def read_stage_results(directory):
    """A complete stage's results (``None`` while it is not complete)."""
    path = os.path.join(directory, "results.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)
    if "alphas" not in results:
        raise ValueError(
            f"{path} holds no final alphas: it is not a P-DARTS stage's results (pass "
            "--fresh_start to start over)"
        )
    return results


def _primitives_of(results):
    space = results.get("edge_primitives")
    return None if space is None else tuple(tuple(tuple(e) for e in cell) for cell in space)


def run_stages(
    root_dir, schedule, *, channels, layers, nodes, steps_per_stage, run_stage, chief=True
):
    """Runs (or resumes) every stage; returns the final results.

    Args:
      root_dir: the search's directory.
      schedule: a checked ``ProgressiveSchedule``.
      channels, layers, nodes: the first stage's supernet before ``add_*``.
      steps_per_stage: iterations of one stage.
      run_stage: ``run_stage(stage) -> results`` runs one ``Stage`` as a one-stage search
        (whose results carry ``alphas`` and ``edge_primitives``), resuming from the stage
        directory's checkpoints.
      chief: whether this process writes the final outputs.

    Returns:
      ``{"genotype", "skip_limit", "genotypes_by_skip_limit", "stages", ...}``: the final
      genotype (string), the genotypes per limit, each stage's results (alphas left out), and
      the last stage's search-val (and holdout) accuracies, steps and seconds in all.
    """
    edge_primitives, stage_results = None, []
    for index in range(schedule.num_stages):
        directory = stage_dir(root_dir, index)
        stage = Stage(
            index=index,
            root_dir=directory,
            channels=channels + schedule.add_channels[index],
            layers=layers + schedule.add_layers[index],
            edge_primitives=edge_primitives,
            skip_dropout=schedule.skip_dropout[index],
            first_step=index * steps_per_stage,
        )
        results = read_stage_results(directory)
        if results is None:
            print(
                f"P-DARTS stage {index + 1}/{schedule.num_stages}: {stage.layers} cells, "
                f"C={stage.channels}, {_ops_per_edge(edge_primitives)} ops per edge, skip "
                f"dropout {stage.skip_dropout:g} ({directory})",
                flush=True,
            )
            results = run_stage(stage)
        else:
            print(f"P-DARTS stage {index + 1} is complete ({directory})", flush=True)
        if _primitives_of(results) != edge_primitives:
            raise ValueError(
                f"{directory} was searched over other candidate ops than the previous stage "
                "kept: the run's stages are inconsistent (pass --fresh_start to start over)"
            )
        stage_results.append(results)
        alpha_normal, alpha_reduce = (np.asarray(results["alphas"][c]) for c in range(2))
        if index < schedule.num_stages - 1:
            edge_primitives = pdarts.prune_edge_primitives(
                alpha_normal, alpha_reduce, edge_primitives, schedule.ops_kept[index]
            )
    genotypes = pdarts.skip_limited_genotypes(
        alpha_normal, alpha_reduce, edge_primitives, steps=nodes
    )
    return _final(root_dir, schedule, genotypes, stage_results, chief)


def _ops_per_edge(edge_primitives):
    return len(genotype_lib.PRIMITIVES) if edge_primitives is None else len(edge_primitives[0][0])


def _final(root_dir, schedule, genotypes, stage_results, chief):
    """The final results; the chief writes them and the genotypes."""
    final = genotypes[schedule.skip_limit]
    if chief:
        os.makedirs(os.path.join(root_dir, "genotypes"), exist_ok=True)
        for limit, item in genotypes.items():
            _write_genotype(os.path.join(root_dir, "genotypes", f"skip_limit_{limit}"), item)
        _write_genotype(os.path.join(root_dir, "genotype"), final)
    last = stage_results[-1]
    results = {
        "genotype": final.to_string(),
        "skip_limit": schedule.skip_limit,
        "genotypes_by_skip_limit": {str(k): g.to_string() for k, g in sorted(genotypes.items())},
        "steps": sum(r["steps"] for r in stage_results),
        "seconds": sum(r["seconds"] for r in stage_results),
        "stages": [{k: v for k, v in r.items() if k != "alphas"} for r in stage_results],
    }
    for key in ("search_val_accuracy", "holdout_accuracy"):
        if key in last:
            results[key] = last[key]
    if chief:
        path = os.path.join(root_dir, "results.json")
        run_dir.write_atomically(path, json.dumps(results, indent=2))
    return results


def _write_genotype(stem, item):
    run_dir.write_atomically(f"{stem}.json", item.to_json())
    dot = genotype_lib.to_dot(item, "normal") + genotype_lib.to_dot(item, "reduce")
    run_dir.write_atomically(f"{stem}.dot", dot)


def edge_primitives_text(edge_primitives, nodes):
    """A Markdown table of the ops on each edge (``node<-input``) for TensorBoard."""
    if edge_primitives is None:
        return "every op on every edge"
    lines = ["| edge | normal | reduce |", "| --- | --- | --- |"]
    edges = [(node, j) for node in range(nodes) for j in range(node + 2)]
    for e, (node, j) in enumerate(edges):
        lines.append(
            f"| {node + 2}<-{j} | {', '.join(edge_primitives[0][e])} | "
            f"{', '.join(edge_primitives[1][e])} |"
        )
    return "\n".join(lines)
