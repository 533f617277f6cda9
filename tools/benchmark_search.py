"""Benchmark of one interleaving-learning search iteration (architecture step + weight steps).

Prints one JSON object: compile seconds (process start to the end of the first iteration, and
the first-call seconds of each compiled function), median steady-state seconds of the
architecture step and of the weight steps over ``--steps`` iterations after warm-up, FLOPs per
iteration (TF profiler count over the compiled graphs) with achieved GFLOP/s, graph sizes and
peak RSS, and what it ran on (``environment``: versions, git commit, CPU model and usable
cores, TensorFlow's thread pools, the environment variables that change TensorFlow's speed,
the load average before and after), so that two runs can be compared.

  python tools/benchmark_search.py --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 \
      --mode=exact
"""

from __future__ import annotations

import json
import os
import resource
import time

START = time.time()
LOAD_BEFORE = os.getloadavg()

import machine_info  # noqa: E402 (tools/, the script's directory)
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
flags.DEFINE_enum(
    "mixed_precision",
    "float32",
    ["float32", "mixed_float16", "mixed_bfloat16"],
    "Compute dtype of the encoders and heads (run_search.mixed_precision).",
)
flags.DEFINE_enum("recompute", "none", ["none", "cells"], "SearchEncoder.recompute (memory).")
flags.DEFINE_bool(
    "pc_darts",
    False,
    "PC-DARTS (Xu et al., 2020): partial channels (--partial_channels) and edge normalisation.",
)
flags.DEFINE_integer("partial_channels", 4, "PC-DARTS' K (with --pc_darts).")
flags.DEFINE_integer(
    "pdarts_ops",
    8,
    "P-DARTS (Chen et al., 2019) stage search space: ops per edge (8, or 5 / 3 as after its "
    "first / second stage; the subsets are pruned from seeded random alphas).",
)
flags.DEFINE_float(
    "skip_dropout", 0.0, "P-DARTS' skip-connect dropout rate (> 0: masks from noise ids)."
)
flags.DEFINE_enum(
    "xla",
    "none",
    ["none", "weight_step", "arch_step", "both"],
    "Which step functions to jit_compile with XLA (per function, issue 14).",
)
flags.DEFINE_bool("grappler", True, "Grappler meta-optimizer on (TF default).")
flags.DEFINE_string(
    "profile_dir",
    None,
    "If set, write a TF profiler trace (TensorBoard's Profile tab) of the first call and of"
    " one steady iteration under this folder.",
)
flags.DEFINE_integer("steps", 5, "Timed iterations after the first.")
flags.DEFINE_float(
    "max_rss_gib", 0.0, "If > 0, exit with status 3 as soon as the RSS exceeds this many GiB."
)
flags.DEFINE_bool("flops", True, "Count FLOPs (traces an inlined copy of the step graphs).")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).")
FLAGS = flags.FLAGS

# Environment variables that change how fast TensorFlow runs (or whether it uses a GPU).
SPEED_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_XLA_FLAGS",
    "TF_GPU_ALLOCATOR",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPATH",
)


def _git_commit():
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(tf, keras):
    """What the benchmark ran on: versions, hardware, thread pools, load (see module doc)."""
    import platform

    import numpy

    from ilnas_tf import __file__ as package_file

    gpus = tf.config.list_physical_devices("GPU")
    gpu_names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        gpu_names.append(details.get("device_name", gpu.name))
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "ilnas_tf": os.path.dirname(os.path.abspath(package_file)),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "cpu": machine_info.cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpus_total": os.cpu_count(),
        "cgroup_cpu_max": machine_info.read_text("/sys/fs/cgroup/cpu.max"),
        "gpus": gpu_names,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "variables": {name: os.environ.get(name) for name in SPEED_VARIABLES},
        "load_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


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

    from ilnas_tf import engine, learner, pc_darts, pdarts, precision, search_space

    if not FLAGS.grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
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
    precision_policy = None if FLAGS.mixed_precision == "float32" else FLAGS.mixed_precision
    loss_scale = precision.DEFAULT_LOSS_SCALE if precision_policy == "mixed_float16" else None
    edge_primitives = None
    if FLAGS.pdarts_ops < 8:
        rng = np.random.default_rng(0)
        alphas = [rng.normal(size=(14, 8)) for _ in range(2)]
        edge_primitives = pdarts.prune_edge_primitives(*alphas, None, FLAGS.pdarts_ops)
    architecture = (
        pc_darts.EdgeNormalizedArchitecture(edge_primitives=edge_primitives)
        if FLAGS.pc_darts
        else search_space.Architecture(edge_primitives=edge_primitives)
    )
    partial_channels = FLAGS.partial_channels if FLAGS.pc_darts else 1
    dropout = FLAGS.skip_dropout > 0
    rate = tf.Variable(FLAGS.skip_dropout, trainable=False) if dropout else None
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                FLAGS.channels,
                FLAGS.layers,
                cell_impl=FLAGS.cell_impl,
                recompute=FLAGS.recompute,
                partial_channels=partial_channels,
                edge_primitives=edge_primitives,
                skip_dropout=dropout,
                dtype=precision_policy,
            ),
            search_space.ClassifierHead(10, dtype=precision_policy),
            shape,
            name=f"learner{k}",
            loss_scale=loss_scale,
            skip_dropout_rate=rate,
        )
        for k in range(FLAGS.learners)
    ]
    eng = engine.InterleavingEngine(
        architecture, learners, config, shared_stage_functions=FLAGS.shared_stage_functions
    )

    def batch(stream):
        images = tf.random.normal((FLAGS.batch,) + shape)
        labels = tf.random.uniform((FLAGS.batch,), 0, 10, tf.int32)
        if not dropout:
            return images, labels
        noise = tf.stack(
            [tf.fill([FLAGS.batch], tf.constant(stream, tf.int64)),
             tf.zeros([FLAGS.batch], tf.int64), tf.range(FLAGS.batch, dtype=tf.int64)], axis=1,
        )  # fmt: skip
        return images, labels, noise

    train = [batch(s) for s in range(len(config.stages))]
    val = [batch(len(config.stages) + k) for k in range(FLAGS.learners)]
    lr = tf.constant(0.025)

    @tf.function(jit_compile=FLAGS.xla in ("arch_step", "both"))
    def arch_step(train, val, lr):
        grads, losses, _ = eng.arch_gradient(train, val, lr)
        eng.apply_arch_gradient(grads)
        return tf.add_n(losses)

    @tf.function(jit_compile=FLAGS.xla in ("weight_step", "both"))
    def weight_step(train, lr):
        return tf.add_n([m[0] for m in eng.weight_step(train, lr)])

    built = time.time()
    arch_concrete = arch_step.get_concrete_function(train, val, lr)
    weight_concrete = weight_step.get_concrete_function(train, lr)
    traced = time.time()
    if FLAGS.profile_dir:
        tf.profiler.experimental.start(os.path.join(FLAGS.profile_dir, "first_call"))
    tick = time.time()
    arch_step(train, val, lr).numpy()
    arch_first = time.time() - tick
    tick = time.time()
    weight_step(train, lr).numpy()
    weight_first = time.time() - tick
    first_iteration_end = time.time()
    first_iteration_cpu = time.process_time()
    if FLAGS.profile_dir:
        tf.profiler.experimental.stop()
        tf.profiler.experimental.start(os.path.join(FLAGS.profile_dir, "steady"))
        arch_step(train, val, lr).numpy()
        weight_step(train, lr).numpy()
        tf.profiler.experimental.stop()
    arch_times, weight_times, arch_cpu, weight_cpu = [], [], [], []
    for _ in range(FLAGS.steps):
        tick, cpu = time.time(), time.process_time()
        arch_step(train, val, lr).numpy()
        arch_times.append(time.time() - tick)
        arch_cpu.append(time.process_time() - cpu)
        tick, cpu = time.time(), time.process_time()
        weight_step(train, lr).numpy()
        weight_times.append(time.time() - tick)
        weight_cpu.append(time.process_time() - cpu)
    arch_s, weight_s = float(np.median(arch_times)), float(np.median(weight_times))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu_peak = None
    if tf.config.list_physical_devices("GPU"):
        gpu_peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
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
        "recompute": FLAGS.recompute,
        "pc_darts": FLAGS.pc_darts,
        "partial_channels": partial_channels,
        "pdarts_ops": FLAGS.pdarts_ops,
        "skip_dropout": FLAGS.skip_dropout,
        "mixed_precision": FLAGS.mixed_precision,
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
        # CPU seconds of all threads: less sensitive than wall time to other jobs' load.
        "compile_cpu_s": round(first_iteration_cpu, 1),
        "iteration_cpu_s": round(float(np.median(arch_cpu)) + float(np.median(weight_cpu)), 3),
        "gflops_per_iteration": round(flops / 1e9, 2),
        "achieved_gflops_per_s": round(flops / 1e9 / (arch_s + weight_s), 1) if flops else None,
        "peak_rss_gib": round(peak_rss, 2),
        "gpu_peak_gib": None if gpu_peak is None else round(gpu_peak, 2),
        "arch_step_all_s": [round(t, 3) for t in arch_times],
        "weight_step_all_s": [round(t, 3) for t in weight_times],
        "environment": environment(tf, keras),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
