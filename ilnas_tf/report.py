"""A sweep's report: per-point mean ± std tables, genotype agreement, plots.

``write_report(root)`` reads only the sweep's directory: ``sweep.json`` (the points and runs,
written by ``ilnas_tf.sweep`` before any run), each finished run's ``results.json`` and
``genotype.json`` (search and trainings), the per-epoch ``genotypes/epoch_NNNN_alphas.json``
and the TensorBoard event files (through TensorBoard's own reader). Unfinished runs are left
out (and listed), so a report can be written at any time. It writes ``<root>/report/``:

    summary.csv, summary.md      per point: n and mean ± std of each metric (below)
    genotype_agreement.csv       per point: how often each (cell, edge, op) was chosen
    plots/*.png                  each metric against each swept value (error bars: std),
                                 per run: alpha trajectories and search curves

Metrics per run: ``search_val/<learner>`` and ``holdout/<learner>`` (the search's final
accuracies; holdout with the ablation split; a learner is named by its dataset where that is
unambiguous, ``learner_labels``), ``test/<dataset>`` and ``params_M/<dataset>``
(each training of the derived genotype: final test accuracy, parameters in millions without
the auxiliary head), ``search_seconds`` (wall time of the search's last invocation) and
``device_hours`` (that times the devices it ran on, / 3600: the paper's GPU-days column in
hours). The std is the sample standard deviation (ddof = 1; empty for n = 1).
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import re

from ilnas_tf import genotype as genotype_lib

REPORT_DIR = "report"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def finished_results(directory):
    """The results of ``directory``'s run if it is complete (its record's ``completed_steps``
    set and ``results.json`` readable), else None."""
    record = _read_json(os.path.join(directory, "run.json"))
    results = _read_json(os.path.join(directory, "results.json"))
    if not record or record.get("completed_steps") is None or results is None:
        return None
    return results


def read_plan(root_dir):
    """The sweep's ``sweep.json``; ValueError naming it when missing or unreadable."""
    path = os.path.join(root_dir, "sweep.json")
    plan = _read_json(path)
    if plan is None:
        raise ValueError(
            f"{path!r} is missing or unreadable: expected a sweep root written by "
            "python -m ilnas_tf.sweep (or its --print_commands)"
        )
    return plan


def learner_labels(names):
    """``{learner name: label}``: the names without their ``_<k>`` learner index when that
    leaves them distinct (``cifar100_0`` -> ``cifar100``), so that runs with other learner
    orders or counts (the task-order ablation, DARTS on one task) share columns."""
    stripped = {name: re.sub(r"_\d+$", "", name) for name in names}
    return stripped if len(set(stripped.values())) == len(stripped) else {n: n for n in names}


def run_metrics(search, trainings):
    """``{metric: value}`` of one run from its search and training results dicts."""
    metrics = {}
    labels = learner_labels(search.get("search_val_accuracy") or {})
    for key, family in (("search_val_accuracy", "search_val"), ("holdout_accuracy", "holdout")):
        for learner, value in (search.get(key) or {}).items():
            metrics[f"{family}/{labels.get(learner, learner)}"] = float(value)
    for results in trainings:
        dataset = results.get("dataset", "train").replace("/", "_")
        metrics[f"test/{dataset}"] = float(results["test_accuracy"])
        if "parameters" in results:
            metrics[f"params_M/{dataset}"] = results["parameters"] / 1e6
    seconds = float(search.get("seconds", math.nan))
    metrics["search_seconds"] = seconds
    metrics["device_hours"] = seconds * int(search.get("devices", 1)) / 3600.0
    return metrics


def collect(root_dir):
    """Every planned run with what has finished: a list of dicts (point, seed, metrics, ...)."""
    plan = read_plan(root_dir)
    points = {p["name"]: p for p in plan["points"]}
    runs = []
    for entry in plan["runs"]:
        search_dir = os.path.join(root_dir, entry["search_dir"])
        search = finished_results(search_dir)
        trainings = [
            finished_results(os.path.join(root_dir, d)) for d in entry["train_dirs"].values()
        ]
        genotype = None
        if search is not None:
            text = _read_json(os.path.join(search_dir, "genotype.json"))
            genotype = genotype_lib.Genotype.from_dict(text) if text else None
        runs.append(
            {
                "point": points[entry["point"]],
                "seed": entry["seed"],
                "search_dir": search_dir,
                "finished": search is not None,
                "trainings_finished": sum(t is not None for t in trainings),
                "trainings_planned": len(trainings),
                "metrics": run_metrics(search, [t for t in trainings if t]) if search else {},
                "genotype": genotype,
            }
        )
    return plan, runs


def mean_std(values):
    """``(mean, sample std or None for n < 2, n)`` of the finite ``values``."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def metric_names(runs):
    """Every metric of the finished runs, in a stable order (accuracies first)."""
    order = ("search_val", "holdout", "test", "params_M", "search_seconds", "device_hours")
    names = {name for run in runs for name in run["metrics"]}
    return sorted(names, key=lambda n: (order.index(n.split("/")[0]), n))


def _choices(genotype):
    for cell in ("normal", "reduce"):
        for index, (op, source) in enumerate(getattr(genotype, cell)):
            yield cell, index // 2, source, op


def genotype_agreement(runs):
    """``(rows, score)``: each chosen (cell, node, input, op) with its count over the runs'
    genotypes, and the mean over the runs' choices of their frequency (1: all agree)."""
    genotypes = [run["genotype"] for run in runs if run["genotype"] is not None]
    counts = collections.Counter(c for g in genotypes for c in set(_choices(g)))
    n = len(genotypes)
    rows = [
        {"cell": cell, "edge": genotype_lib.edge_label(node, source), "op": op, "count": count, "n": n,
         "frequency": count / n}
        for (cell, node, source, op), count in sorted(
            counts.items(), key=lambda item: (item[0][0] != "normal", item[0][1:], -item[1])
        )
    ]  # fmt: skip
    frequencies = [counts[c] / n for g in genotypes for c in _choices(g)]
    score = sum(frequencies) / len(frequencies) if frequencies else None
    return rows, score


def summarize(plan, runs):
    """Per point: ``{"point", "values", "runs", "finished", metric: (mean, std, n), ...}``."""
    names = metric_names(runs)
    rows = []
    for point in plan["points"]:
        mine = [r for r in runs if r["point"]["name"] == point["name"]]
        done = [r for r in mine if r["finished"]]
        row = {"point": point["name"], "values": point["values"], "variant": point["variant"],
               "runs": len(mine), "finished": len(done)}  # fmt: skip
        for name in names:
            row[name] = mean_std([r["metrics"].get(name) for r in done])
        row["genotype_agreement"] = genotype_agreement(done)[1]
        rows.append(row)
    return names, rows


def _number(value, digits=4):
    return "" if value is None else f"{value:.{digits}g}"


def format_cell(stat, digits=4):
    """``"mean ± std (n)"``; ``"mean (n=1)"``; ``""`` without values."""
    mean, std, n = stat
    if mean is None:
        return ""
    if std is None:
        return f"{_number(mean, digits)} (n=1)"
    return f"{_number(mean, digits)} ± {_number(std, digits)} ({n})"


def axis_names(plan):
    return [key.rsplit(".", 1)[-1] for key in plan["grid"]]


def write_csv(path, plan, names, rows):
    keys = list(plan["grid"])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["point", "variant", *axis_names(plan), "runs", "finished"]
        header += [f"{n}_{s}" for n in names for s in ("mean", "std", "n")]
        writer.writerow([*header, "genotype_agreement"])
        for row in rows:
            values = [row["point"], row["variant"] or "", *(row["values"][k] for k in keys)]
            values += [row["runs"], row["finished"]]
            for name in names:
                mean, std, n = row[name]
                values += [_number(mean, 8), _number(std, 8), n]
            writer.writerow([*values, _number(row["genotype_agreement"], 8)])


def markdown_table(plan, names, rows):
    """The summary as a Markdown table (one row per point)."""
    keys = list(plan["grid"])
    header = ["point", *axis_names(plan), "searches", *names, "genotype agreement"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["point"], *(repr(row["values"][k]) for k in keys),
                 f"{row['finished']}/{row['runs']}"]  # fmt: skip
        cells += [format_cell(row[name]) for name in names]
        cells.append(_number(row["genotype_agreement"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(root_dir, plots=True):
    """Writes ``<root>/report`` (tables, plots); returns ``{"markdown", "csv", "runs"}``."""
    from ilnas_tf import report_plots

    plan, runs = collect(root_dir)
    names, rows = summarize(plan, runs)
    out = os.path.join(root_dir, REPORT_DIR)
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "summary.csv"), plan, names, rows)
    with open(os.path.join(out, "genotype_agreement.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["point", "cell", "edge", "op", "count", "n", "frequency"])
        for point in plan["points"]:
            done = [r for r in runs if r["point"]["name"] == point["name"] and r["finished"]]
            for item in genotype_agreement(done)[0]:
                writer.writerow([point["name"], *item.values()])
    images = report_plots.write_plots(out, plan, runs, names, rows) if plots else []
    lines = [
        f"# Sweep report: {os.path.basename(os.path.abspath(root_dir))}",
        "",
        f"Grid: `{plan['grid']}`; variants: `{list(plan['variants'])}`; seeds: "
        f"`{plan['seeds']}`. Mean ± sample std (n) over the finished runs of each point.",
        "",
        markdown_table(plan, names, rows),
        "",
    ]
    unfinished = [f"{r['point']['name']} seed {r['seed']}" for r in runs if not r["finished"]]
    if unfinished:
        lines += [f"Not finished (left out): {', '.join(unfinished)}.", ""]
    lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, out)})" for p in images["summary"]]
    markdown = os.path.join(out, "summary.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return {"markdown": markdown, "csv": os.path.join(out, "summary.csv"),
            "runs": sum(r["finished"] for r in runs), "images": images}  # fmt: skip
