"""Measures the interleaving chain's approximations on tiny float64 supernets.

Three tables (Markdown on stdout, one JSON line per row with ``--json``):

1. ``fd``: cosine between the finite-difference mode's hypergradient and the exact one, for
   K=1 (DARTS) and K=2, M=2 (IL, both transfers), at DARTS' stencil r=0.01 and at a tiny
   stencil r=1e-8 (where only the finite-difference mode's dropped cross-stage terms remain).
2. ``dynamics``: cosine between the exact one-iteration hypergradient and the central
   finite-difference gradient (every entry of A) of the validation loss after H iterations of
   the *real* weight updates at a fixed architecture, for one weight copy per (learner,
   round) versus one per learner.
3. ``proximal``: the same at the paper's lambda=100, eta=0.025 for the closed-form and the
   literal proximal step, with the chain's amplification (product of the link gains).

  python tools/measure_chain.py            # all tables (about 10 minutes on 2 CPU cores)
  python tools/measure_chain.py --tables=fd
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from ilnas_tf import engine, hypergradient, learner, search_space

flags.DEFINE_list("tables", ["fd", "dynamics", "proximal"], "Tables to measure.")
flags.DEFINE_integer("seeds", 2, "Random problems per row (the table shows their mean).")
flags.DEFINE_bool("json", False, "Also print one JSON line per row.")
FLAGS = flags.FLAGS

IMAGE_SHAPE = (16, 16, 3)


def build(config, seed, nodes=2, channels=2, layers=3):
    """A tiny float64 engine with K learners of 3 classes each."""
    keras.utils.set_random_seed(seed)
    arch = search_space.Architecture(steps=nodes, init_scale=0.5, dtype="float64")
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                channels, layers, steps=nodes, multiplier=nodes, dtype="float64"
            ),
            search_space.ClassifierHead(3, dtype="float64"),
            IMAGE_SHAPE,
            name=f"learner{k}",
            num_states=config.rounds if config.weights_per_stage else 1,
        )
        for k in range(config.num_learners)
    ]
    return engine.InterleavingEngine(arch, learners, config)


def batches(eng, seed, batch=4):
    rng = np.random.default_rng(seed)

    def one():
        images = rng.normal(size=(batch,) + IMAGE_SHAPE)
        return tf.constant(images), tf.constant(rng.integers(0, 3, size=(batch,)).astype(np.int32))

    return [one() for _ in eng.config.stages], [one() for _ in range(eng.config.num_learners)]


def flat(tensors):
    return np.concatenate([np.asarray(t).ravel() for t in tensors])


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fd_table(seeds):
    rows = []
    il = dict(num_learners=2, rounds=2)
    settings = [
        ("DARTS K=1, eta=0.025", 0.025, dict()),
        ("IL K=2 M=2 proximal lambda=1, eta=0.05 (demo)", 0.05, dict(il, proximal_strength=1.0)),
        (
            "IL K=2 M=2 proximal lambda=100, eta=0.025 (paper)",
            0.025,
            dict(il, proximal_strength=100.0),
        ),
        ("IL K=2 M=2 handover, eta=0.05", 0.05, dict(il, transfer="handover")),
    ]
    for name, lr, kwargs in settings:
        for scale in (0.01, 1e-8):
            values = []
            for seed in range(seeds):
                grads = {}
                for mode in ("exact", "finite_difference"):
                    config = engine.InterleavingConfig(mode=mode, fd_scale=scale, **kwargs)
                    eng = build(config, seed)
                    train, val = batches(eng, seed + 100)
                    grads[mode] = flat(eng.arch_gradient(train, val, lr)[0])
                values.append(cosine(grads["exact"], grads["finite_difference"]))
            rows.append({"table": "fd", "setting": name, "fd_scale": scale, "cosine": values})
    return rows


def real_objective(eng, iterations):
    """J(A): sum_k L_k^val after ``iterations`` real weight steps at architecture A."""
    cfg = eng.config
    keys = [(k, cfg.state_index(s)) for s, (_, k) in enumerate(cfg.stages)]
    problems = [eng.problem(*batches(eng, 500 + i), 0.0) for i in range(iterations)]
    lr = tf.constant(eng_lr(eng), tf.float64)

    @tf.function(autograph=False)
    def objective(parameters):
        starts = problems[0].starts
        for problem in problems:
            problem = problem._replace(starts=starts, learning_rate=lr)
            states, _ = hypergradient.weight_updates(problem, parameters, keys)
            starts = tuple(states[key] for key in keys)
            if cfg.transfer == "handover":
                starts = (starts[0]._replace(encoder=starts[-1].encoder),) + starts[1:]
        finals = [starts[cfg.last_stage(k)][:2] for k in range(cfg.num_learners)]
        total, _, _ = hypergradient.validation_objective(problems[0], parameters, finals)
        return total

    return objective, problems[0]


def eng_lr(eng):
    return 0.025 if eng.config.proximal_strength >= 100 else 0.05


def fd_gradient(objective, parameters, step=1e-6):
    grads = []
    for p in parameters:
        g = np.zeros(p.shape)
        for index in np.ndindex(*p.shape):
            delta = np.zeros(p.shape)
            delta[index] = step
            plus = [q + delta if q is p else q for q in parameters]
            minus = [q - delta if q is p else q for q in parameters]
            g[index] = (float(objective(plus)) - float(objective(minus))) / (2 * step)
        grads.append(g)
    return flat(grads)


def dynamics_rows(name, config, seeds, horizons, table):
    rows = []
    for horizon in horizons:
        values, amplification = [], []
        for seed in range(seeds):
            eng = build(config, seed)
            objective, first = real_objective(eng, horizon)
            parameters = [tf.convert_to_tensor(a) for a in eng.architecture.parameters]
            train, val = first.train_batches, batches(eng, 500)[1]
            lr = eng_lr(eng)
            result = eng.arch_gradient_result(train, val, lr)
            metrics = engine.chain_diagnostics(result, len(config.stages))
            amplification.append(float(metrics["chain_amplification"]))
            values.append(cosine(flat(result.gradients), fd_gradient(objective, parameters)))
        rows.append(
            {
                "table": table,
                "setting": name,
                "horizon": horizon,
                "cosine": values,
                "chain_amplification": amplification,
            }
        )
    return rows


def dynamics_table(seeds):
    rows = []
    for per_stage in (True, False):
        config = engine.InterleavingConfig(
            num_learners=2, rounds=2, proximal_strength=1.0, weights_per_stage=per_stage
        )
        name = "one copy per (learner, round)" if per_stage else "one copy per learner"
        rows += dynamics_rows(name, config, seeds, (1, 3), "dynamics")
    return rows


def proximal_table(seeds):
    rows = []
    for step in ("closed_form", "gradient"):
        config = engine.InterleavingConfig(
            num_learners=2, rounds=2, proximal_strength=100.0, proximal_step=step
        )
        rows += dynamics_rows(f"lambda=100, eta=0.025, {step}", config, seeds, (1,), "proximal")
    return rows


def _markdown(rows):
    lines = ["| table | setting | parameter | mean cosine (seeds) | chain amplification |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for row in rows:
        parameter = (
            f"r={row['fd_scale']:g}" if "fd_scale" in row else f"H={row['horizon']} iterations"
        )
        cosines = ", ".join(f"{c:.4f}" for c in row["cosine"])
        amp = row.get("chain_amplification")
        amp_text = ", ".join(f"{a:.3g}" for a in amp) if amp else ""
        lines.append(
            f"| {row['table']} | {row['setting']} | {parameter} | "
            f"{np.mean(row['cosine']):.4f} ({cosines}) | {amp_text} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    tables = {"fd": fd_table, "dynamics": dynamics_table, "proximal": proximal_table}
    rows = []
    for name in FLAGS.tables:
        new = tables[name](FLAGS.seeds)
        rows += new
        if FLAGS.json:
            for row in new:
                print(json.dumps(row), flush=True)
    print(_markdown(rows))


if __name__ == "__main__":
    app.run(main)
