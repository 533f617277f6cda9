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
flags.DEFINE_enum(
    "exact_method", "stagewise", ["stagewise", "nested_tapes"], "How exact mode differentiates."
)
flags.DEFINE_enum(
    "hvp_method",
    "forward_over_reverse",
    ["forward_over_reverse", "reverse_over_reverse"],
    "Mixed second derivative of exact_method=stagewise.",
)
flags.DEFINE_bool(
    "shared_stage_functions", True, "Trace stage computations once as non-inlined functions."
)
flags.DEFINE_enum("cell_impl", "fused", ["per_edge", "fused"], "Search cell implementation.")
flags.DEFINE_bool("xla", False, "jit_compile the step functions.")
flags.DEFINE_bool("grappler", True, "Grappler meta-optimizer on (TF default).")
flags.DEFINE_integer("steps", 5, "Timed iterations after the first.")
flags.DEFINE_float(
    "max_rss_gib", 0.0, "If > 0, exit with status 3 as soon as the RSS exceeds this many GiB."
)
flags.DEFINE_bool("flops", True, "Count FLOPs (traces an inlined copy of the step graphs).")
FLAGS = flags.FLAGS


def _watch_rss(limit_gib):
    """Daemon thread: prints a JSON line and exits with status 3 once RSS > ``limit_gib``."""
    import os
    import threading

    def rss_gib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
        return 0.0

    def watch():
        while True:
            rss = rss_gib()
            if rss > limit_gib:
                print(json.dumps({"killed": "rss", "rss_gib": round(rss, 2)}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _graph_ops(concrete_function):
    """Ops of the graph and of every function in its library (non-inlined stage functions)."""
    graph_def = concrete_function.graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def _flops(concrete_function):
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(concrete_function.graph, options=options)
    return int(info.total_float_ops) if info is not None else 0


def main(argv):
    del argv
    if FLAGS.max_rss_gib > 0:
        _watch_rss(FLAGS.max_rss_gib)
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
        exact_method=FLAGS.exact_method,
        hvp_method=FLAGS.hvp_method,
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
    eng = engine.InterleavingEngine(
        architecture, learners, config, shared_stage_functions=FLAGS.shared_stage_functions
    )

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
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flops = 0
    if FLAGS.flops:
        # The profiler does not look inside function calls: count an inlined copy.
        eng.shared_stage_functions = False
        flops = _flops(tf.function(arch_step.python_function).get_concrete_function(train, val, lr))
        flops += _flops(tf.function(weight_step.python_function).get_concrete_function(train, lr))
    result = {
        "channels": FLAGS.channels,
        "layers": FLAGS.layers,
        "batch": FLAGS.batch,
        "image_size": FLAGS.image_size,
        "learners": FLAGS.learners,
        "rounds": FLAGS.rounds,
        "mode": FLAGS.mode,
        "exact_method": FLAGS.exact_method,
        "hvp_method": FLAGS.hvp_method,
        "shared_stage_functions": FLAGS.shared_stage_functions,
        "cell_impl": FLAGS.cell_impl,
        "xla": FLAGS.xla,
        "grappler": FLAGS.grappler,
        "weights_per_learner": learners[0].num_encoder_weights + learners[0].num_head_weights,
        "graph_ops": _graph_ops(arch_concrete) + _graph_ops(weight_concrete),
        "setup_s": round(built - START, 1),
        "trace_s": round(traced - built, 1),
        "arch_first_call_s": round(arch_first, 1),
        "weight_first_call_s": round(weight_first, 1),
        "compile_s": round(first_iteration_end - START, 1),
        "arch_step_s": round(arch_s, 3),
        "weight_step_s": round(weight_s, 3),
        "iteration_s": round(arch_s + weight_s, 3),
        "gflops_per_iteration": round(flops / 1e9, 2),
        "achieved_gflops_per_s": round(flops / 1e9 / (arch_s + weight_s), 1) if flops else None,
        "peak_rss_gib": round(peak_rss, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
