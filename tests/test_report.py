"""The sweep report on hand-made run directories: hand-computed mean ± std, genotype agreement,
unfinished runs left out, and the PNG plots as images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from ilnas_tf import report

GENOTYPES = [
    # Two of three seeds agree on the normal cell; all three on the reduce cell.
    {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["sep_conv_3x3", 0], ["max_pool_3x3", 2]],
     "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]]},
    {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["sep_conv_3x3", 0], ["max_pool_3x3", 2]],
     "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]]},
    {"normal": [["dil_conv_3x3", 1], ["skip_connect", 0], ["sep_conv_3x3", 0], ["max_pool_3x3", 2]],
     "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]]},
]  # fmt: skip
# Point "lam=1" (three seeds) and "lam=10" (seed 0 finished, seed 1 unfinished, seed 2 with an
# unfinished training): search-val / holdout per learner, trained test accuracy, parameters.
VALUES = {
    ("lam=1", 0): (0.2, 0.5, 0.30, 0.60, 0.70, 120_000, 10.0),
    ("lam=1", 1): (0.4, 0.6, 0.40, 0.40, 0.80, 130_000, 20.0),
    ("lam=1", 2): (0.9, 0.7, 0.80, 0.50, 0.75, 110_000, 60.0),
    ("lam=10", 0): (0.5, 0.5, 0.50, 0.50, 0.90, 100_000, 30.0),
    ("lam=10", 2): (0.7, 0.3, 0.60, 0.40, None, None, 50.0),
}


def _write(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _complete(directory, command, results):
    _write(directory / "run.json", {"command": command, "fingerprint": {}, "completed_steps": 4})
    _write(directory / "results.json", results)


def _alphas(directory, epochs=3):
    rng = np.random.default_rng(0)
    for epoch in range(1, epochs + 1):
        alphas = [(rng.normal(size=(5, 8)) * epoch).tolist() for _ in range(2)]
        _write(
            directory / "genotypes" / f"epoch_{epoch:04d}_alphas.json",
            {"epoch": epoch, "step": 2 * epoch, "alphas": alphas, "edge_primitives": None,
             "edge_weights": None},
        )  # fmt: skip


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    points = [
        {"name": name, "values": {"InterleavingConfig.proximal_strength": value},
         "variant": None, "bindings": [f"InterleavingConfig.proximal_strength = {value}"]}
        for name, value in (("lam=1", 1.0), ("lam=10", 10.0))
    ]  # fmt: skip
    runs = []
    for point in ("lam=1", "lam=10"):
        for seed in range(3):
            base = f"{point}/seed_{seed}"
            runs.append({"point": point, "seed": seed, "search_dir": f"{base}/search",
                         "train_dirs": {"None": f"{base}/train"}, "command": "..."})  # fmt: skip
            values = VALUES.get((point, seed))
            if values is None:  # started, not finished
                _write(root / base / "search" / "run.json",
                       {"command": "search", "fingerprint": {}, "completed_steps": None})  # fmt: skip
                continue
            fine, coarse, hold_fine, hold_coarse, test, parameters, seconds = values
            _complete(
                root / base / "search",
                "search",
                {"search_val_accuracy": {"fine": fine, "coarse": coarse},
                 "holdout_accuracy": {"fine": hold_fine, "coarse": hold_coarse},
                 "seconds": seconds, "devices": 2, "steps": 4},
            )  # fmt: skip
            genotype = dict(GENOTYPES[seed], normal_concat=[2, 3], reduce_concat=[2, 3])
            _write(root / base / "search" / "genotype.json", genotype)
            _alphas(root / base / "search")
            if test is not None:
                _complete(root / base / "train", "train",
                          {"test_accuracy": test, "dataset": "fine", "parameters": parameters})  # fmt: skip
    grid = {"InterleavingConfig.proximal_strength": [1.0, 10.0]}
    _write(root / "sweep.json",
           {"grid": grid, "variants": {}, "seeds": [0, 1, 2], "points": points, "runs": runs})  # fmt: skip
    return root, report.write_report(str(root))


def _rows(root):
    with open(root / "report" / "summary.csv", newline="") as handle:
        return {row["point"]: row for row in csv.DictReader(handle)}


def test_mean_and_sample_std_per_point_are_the_hand_computed_ones(sweep_root):
    root, paths = sweep_root
    rows = _rows(root)
    first, second = rows["lam=1"], rows["lam=10"]
    assert (first["finished"], second["finished"]) == ("3", "2")
    # (0.2, 0.4, 0.9): mean 0.5, deviations -0.3, -0.1, 0.4, sample variance 0.26 / 2.
    assert float(first["search_val/fine_mean"]) == pytest.approx(0.5)
    assert float(first["search_val/fine_std"]) == pytest.approx(math.sqrt(0.13))
    assert float(first["search_val/coarse_mean"]) == pytest.approx(0.6)
    assert float(first["search_val/coarse_std"]) == pytest.approx(0.1)
    assert float(first["holdout/coarse_mean"]) == pytest.approx(0.5)
    assert float(first["test/fine_mean"]) == pytest.approx(0.75)
    assert float(first["test/fine_std"]) == pytest.approx(0.05)
    assert float(first["params_M/fine_mean"]) == pytest.approx(0.12)
    assert float(first["search_seconds_mean"]) == pytest.approx(30.0)
    assert float(first["device_hours_mean"]) == pytest.approx(60.0 / 3600)  # 30 s x 2 devices
    # lam=10: seed 1 unfinished (left out), seed 2's training unfinished (n = 1, no std).
    assert float(second["search_val/fine_mean"]) == pytest.approx(0.6)
    assert float(second["search_val/fine_std"]) == pytest.approx(math.sqrt(0.02))
    assert second["search_val/fine_n"] == "2"
    assert (second["test/fine_mean"], second["test/fine_std"], second["test/fine_n"]) == (
        "0.9",
        "",
        "1",
    )
    markdown = (root / "report" / "summary.md").read_text()
    assert "0.5 ± 0.3606 (3)" in markdown and "0.9 (n=1)" in markdown
    assert "Not finished (left out): lam=10 seed 1." in markdown
    assert paths["runs"] == 5


def test_genotype_agreement_counts_each_chosen_edge_and_op(sweep_root):
    root, _ = sweep_root
    with open(root / "report" / "genotype_agreement.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["point"] == "lam=1"]
    counts = {(r["cell"], r["edge"], r["op"]): int(r["count"]) for r in rows}
    assert counts[("normal", "n0←c_{k-2}", "sep_conv_3x3")] == 2
    assert counts[("normal", "n0←c_{k-1}", "dil_conv_3x3")] == 1
    assert counts[("normal", "n1←n0", "max_pool_3x3")] == 3
    assert all(counts[("reduce", e, o)] == 3 for c, e, o in counts if c == "reduce")
    assert len(rows) == 6 + 4  # normal: 4 agreed + 2 of seed 2; reduce: 4 agreed
    # Mean frequency of the chosen (edge, op)s: seeds 0, 1: (2+2+3+3 + 4*3)/3/8 each; seed 2:
    # (1+1+3+3 + 4*3)/3/8.
    expected = (2 * (10 + 12) + (8 + 12)) / (3 * 3 * 8)
    assert float(_rows(root)["lam=1"]["genotype_agreement"]) == pytest.approx(expected)


def _image(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_plots_are_non_trivial_images(sweep_root):
    root, paths = sweep_root
    images = paths["images"]
    names = sorted(p.rsplit("/", 1)[-1] for p in images["summary"])
    assert names == [f"{f}_vs_proximal_strength.png" for f in ("holdout", "search_val", "test")]
    assert len(images["alphas"]) == 5 * 2  # every finished search, both cells
    for path in images["summary"] + images["alphas"]:
        pixels = _image(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, path
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, path
    assert (
        "![search_val_vs_proximal_strength.png](plots/search_val_vs_proximal_strength.png)"
        in (root / "report" / "summary.md").read_text()
    )


def test_learners_are_named_by_their_dataset_where_that_is_unambiguous():
    assert report.learner_labels(["cifar100_0", "cifar10_1"]) == {
        "cifar100_0": "cifar100",
        "cifar10_1": "cifar10",
    }
    assert report.learner_labels(["cifar10_0", "cifar10_1"]) == {
        "cifar10_0": "cifar10_0",
        "cifar10_1": "cifar10_1",
    }


def test_a_missing_plan_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="sweep.json' is missing or unreadable"):
        report.write_report(str(tmp_path))


def test_a_variants_only_sweep_plots_each_metric_against_the_variants(tmp_path):
    points, runs = [], []
    for variant, accuracy in (("il", 0.6), ("mtl", 0.5), ("darts", 0.4)):
        points.append({"name": variant, "values": {}, "variant": variant, "bindings": []})
        for seed in (0, 1):
            base = f"{variant}/seed_{seed}"
            runs.append({"point": variant, "seed": seed, "search_dir": f"{base}/search",
                         "train_dirs": {}, "command": "..."})  # fmt: skip
            _complete(tmp_path / base / "search", "search",
                      {"search_val_accuracy": {"fine": accuracy + 0.1 * seed}, "seconds": 1.0})  # fmt: skip
    _write(tmp_path / "sweep.json", {"grid": {}, "variants": {p["name"]: [] for p in points},
                                     "seeds": [0, 1], "points": points, "runs": runs})  # fmt: skip
    paths = report.write_report(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths["images"]["summary"]] == [
        "search_val_vs_variant.png"
    ]
    pixels = _image(paths["images"]["summary"][0])
    assert pixels.shape[1] > 300 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
    rows = _rows(tmp_path)
    assert [float(rows[v]["search_val/fine_mean"]) for v in ("il", "mtl", "darts")] == (
        pytest.approx([0.65, 0.55, 0.45])
    )
