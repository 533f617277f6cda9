"""Benchmark of one interleaving-learning search iteration (architecture step + weight steps).

Prints one JSON object: compile seconds (process start to the end of the first iteration, and
the first-call seconds of each compiled function), median steady-state seconds of the
architecture step and of the weight steps over ``--steps`` iterations after warm-up, FLOPs per
iteration (TF profiler count over the compiled graphs) with achieved GFLOP/s, graph sizes and
peak RSS.

  python tools/benchmark_search.py --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 \
      --mode=exact
"""

from __future__ import annotations

import json
import resource
import time

START = time.time()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("channels", 8, "Initial channels C.")
flags.DEFINE_integer("layers", 5, "Search cells.")
flags.DEFINE_integer("batch", 16, "Batch size per learner and stage.")
flags.DEFINE_integer("image_size", 32, "Image height/width.")
flags.DEFINE_integer("learners", 2, "K.")
flags.DEFINE_integer("rounds", 2, "M.")
flags.DEFINE_float("proximal_strength", 100.0, "lambda.")
flags.DEFINE_enum("mode", "exact", ["exact", "finite_difference", "first_order"], "Hypergradient.")
flags.DEFINE_enum("cell_impl", "fused", ["per_edge", "fused"], "Search cell implementation.")
flags.DEFINE_bool("xla", False, "jit_compile the step functions.")
flags.DEFINE_bool("grappler", True, "Grappler meta-optimizer on (TF default).")
flags.DEFINE_integer("steps", 5, "Timed iterations after the first.")
FLAGS = flags.FLAGS


def _flops(concrete_function):
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(concrete_function.graph, options=options)
    return int(info.total_float_ops) if info is not None else 0


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from ilnas_tf import engine, learner, search_space

    if not FLAGS.grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.utils.set_random_seed(0)
    config = engine.InterleavingConfig(
        num_learners=FLAGS.learners,
        rounds=FLAGS.rounds,
        proximal_strength=FLAGS.proximal_strength if FLAGS.learners > 1 else 0.0,
        mode=FLAGS.mode,
    )
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    architecture = search_space.Architecture()
    learners = [
        learner.Learner(
            search_space.SearchEncoder(FLAGS.channels, FLAGS.layers, cell_impl=FLAGS.cell_impl),
            search_space.ClassifierHead(10),
            shape,
            name=f"learner{k}",
        )
        for k in range(FLAGS.learners)
    ]
    eng = engine.InterleavingEngine(architecture, learners, config)

    def batch():
        images = tf.random.normal((FLAGS.batch,) + shape)
        return images, tf.random.uniform((FLAGS.batch,), 0, 10, tf.int32)

    train = [batch() for _ in config.stages]
    val = [batch() for _ in range(FLAGS.learners)]
    lr = tf.constant(0.025)

    @tf.function(jit_compile=FLAGS.xla)
    def arch_step(train, val, lr):
        grads, losses, _ = eng.arch_gradient(train, val, lr)
        eng.apply_arch_gradient(grads)
        return tf.add_n(losses)

    @tf.function(jit_compile=FLAGS.xla)
    def weight_step(train, lr):
        return tf.add_n([m[0] for m in eng.weight_step(train, lr)])

    built = time.time()
    arch_concrete = arch_step.get_concrete_function(train, val, lr)
    weight_concrete = weight_step.get_concrete_function(train, lr)
    traced = time.time()
    tick = time.time()
    arch_step(train, val, lr).numpy()
    arch_first = time.time() - tick
    tick = time.time()
    weight_step(train, lr).numpy()
    weight_first = time.time() - tick
    first_iteration_end = time.time()
    arch_times, weight_times = [], []
    for _ in range(FLAGS.steps):
        tick = time.time()
        arch_step(train, val, lr).numpy()
        arch_times.append(time.time() - tick)
        tick = time.time()
        weight_step(train, lr).numpy()
        weight_times.append(time.time() - tick)
    arch_s, weight_s = float(np.median(arch_times)), float(np.median(weight_times))
    flops = _flops(arch_concrete) + _flops(weight_concrete)
    result = {
        "channels": FLAGS.channels,
        "layers": FLAGS.layers,
        "batch": FLAGS.batch,
        "image_size": FLAGS.image_size,
        "learners": FLAGS.learners,
        "rounds": FLAGS.rounds,
        "mode": FLAGS.mode,
        "cell_impl": FLAGS.cell_impl,
        "xla": FLAGS.xla,
        "grappler": FLAGS.grappler,
        "weights_per_learner": learners[0].num_encoder_weights + learners[0].num_head_weights,
        "graph_ops": len(arch_concrete.graph.get_operations())
        + len(weight_concrete.graph.get_operations()),
        "setup_s": round(built - START, 1),
        "trace_s": round(traced - built, 1),
        "arch_first_call_s": round(arch_first, 1),
        "weight_first_call_s": round(weight_first, 1),
        "compile_s": round(first_iteration_end - START, 1),
        "arch_step_s": round(arch_s, 3),
        "weight_step_s": round(weight_s, 3),
        "iteration_s": round(arch_s + weight_s, 3),
        "gflops_per_iteration": round(flops / 1e9, 2),
        "achieved_gflops_per_s": round(flops / 1e9 / (arch_s + weight_s), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
