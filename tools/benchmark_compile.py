"""Compile-time benchmark of the supernet under an exact 2nd-order DARTS hypergradient.

Builds one ``SearchEncoder`` + ``ClassifierHead`` and a ``tf.function`` that computes the
exact DARTS architecture gradient with nested ``GradientTape``s (train loss -> one SGD step on
the weights -> validation loss -> d/d alphas). Reports, as JSON: graph ops created from
Python, trace seconds, first-call seconds (Grappler + first run), steady-state seconds, peak RSS.

  python tools/benchmark_compile.py --channels=4 --layers=3 --batch=4 --cell_impl=per_edge
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("channels", 4, "Initial channels C.")
flags.DEFINE_integer("layers", 3, "Search cells.")
flags.DEFINE_integer("batch", 4, "Batch size.")
flags.DEFINE_integer("image_size", 32, "Image height/width.")
flags.DEFINE_enum(
    "cell_impl", "fused", ["per_edge", "fused"], "SearchCell (per_edge) or FusedSearchCell."
)
flags.DEFINE_bool("grappler", True, "Grappler meta-optimizer on (TF default).")
flags.DEFINE_integer("steps", 3, "Steady-state steps to time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from ilnas_tf import search_space

    if not FLAGS.grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    start = time.time()
    arch = search_space.Architecture()
    encoder = search_space.SearchEncoder(FLAGS.channels, FLAGS.layers, cell_impl=FLAGS.cell_impl)
    head = search_space.ClassifierHead(10)
    size = FLAGS.image_size
    images = tf.random.normal([FLAGS.batch, size, size, 3])
    labels = tf.random.uniform([FLAGS.batch], 0, 10, tf.int32)
    head(encoder(images, *arch.mixing(arch.parameters)))
    variables = encoder.trainable_variables + head.trainable_variables
    split = len(encoder.trainable_variables)

    def loss_fn(weights, alpha_normal, alpha_reduce):
        mixing = arch.mixing([alpha_normal, alpha_reduce])
        features, _ = encoder.stateless_call(weights[:split], [], images, *mixing)
        logits, _ = head.stateless_call(weights[split:], [], features)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    @tf.function
    def arch_gradient():
        alphas = [arch.alpha_normal.value, arch.alpha_reduce.value]
        weights = [v.value for v in variables]
        with tf.GradientTape() as outer:
            outer.watch(alphas)
            with tf.GradientTape() as inner:
                inner.watch(weights)
                train_loss = loss_fn(weights, *alphas)
            grads = inner.gradient(train_loss, weights)
            virtual = [w - 0.025 * g for w, g in zip(weights, grads)]
            val_loss = loss_fn(virtual, *alphas)
        return outer.gradient(val_loss, alphas)

    built = time.time()
    concrete = arch_gradient.get_concrete_function()
    traced = time.time()
    arch_gradient()[0].numpy()
    first = time.time()
    times = []
    for _ in range(FLAGS.steps):
        tick = time.time()
        arch_gradient()[0].numpy()
        times.append(time.time() - tick)
    result = {
        "channels": FLAGS.channels,
        "layers": FLAGS.layers,
        "batch": FLAGS.batch,
        "cell_impl": FLAGS.cell_impl,
        "grappler": FLAGS.grappler,
        "variables": len(variables),
        "graph_ops": len(concrete.graph.get_operations()),
        "build_s": round(built - start, 2),
        "trace_s": round(traced - built, 2),
        "first_call_s": round(first - traced, 2),
        "steady_step_s": round(float(np.median(times)), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
