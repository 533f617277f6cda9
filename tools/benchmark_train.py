"""Benchmark of the training step of a derived network (compile time, step time, memory).

Prints one JSON object: seconds from process start to the end of the first step (imports,
model build, trace and compile of the step), the first call's seconds alone, the median
steady-state step seconds over ``--steps`` steps after one warm-up step, images per second and
peak RSS. Input batches are random tensors (no data pipeline), so the numbers are the step's.

  python tools/benchmark_train.py --channels=36 --layers=20 --batch=96 --steps=3
"""

from __future__ import annotations

import json
import os
import resource
import time

START = time.time()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("channels", 36, "Initial channels C.")
flags.DEFINE_integer("layers", 20, "Cells.")
flags.DEFINE_integer("batch", 96, "Batch size.")
flags.DEFINE_integer("image_size", 32, "Image height/width.")
flags.DEFINE_integer("classes", 10, "Classes.")
flags.DEFINE_string("genotype", "DARTS_V2", "Genotype (name, JSON file, search root_dir).")
flags.DEFINE_integer("steps", 3, "Timed steps after the warm-up step.")
flags.DEFINE_string("mixed_precision", None, "None, mixed_float16 or mixed_bfloat16.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from ilnas_tf import network, optimizers, run_loop, train_loop

    strategy = tf.distribute.get_strategy()
    model = network.NetworkCIFAR(
        FLAGS.channels, FLAGS.classes, FLAGS.layers, True, FLAGS.genotype, seed=0,
        dtype=FLAGS.mixed_precision or "float32",
    )  # fmt: skip
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    model.build((None, *shape))
    optimizer = optimizers.TorchSGD(0.025, 0.9, 3e-4, global_clipnorm=5.0)
    optimizer.build(model.trainable_variables)
    task = train_loop.TrainTask(
        strategy=strategy, model=model, optimizer=optimizer, make_dataset=None,
        eval_dataset=None, global_batch_size=FLAGS.batch, epochs=1,
        learning_rate=lambda epoch: 0.025, drop_path_rate=0.2, auxiliary_weight=0.4,
    )  # fmt: skip
    train_step = task.compile_step(run_loop.Phase("train", 1))
    model.drop_path_rate.assign(0.1)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(FLAGS.batch, *shape)).astype(np.float32))
    labels = tf.constant(rng.integers(0, FLAGS.classes, FLAGS.batch).astype(np.int32))
    begin = time.time()
    float(train_step(images, labels)[0])
    first_call = time.time() - begin
    compile_seconds = time.time() - START
    float(train_step(images, labels)[0])  # warm-up
    times = []
    for _ in range(FLAGS.steps):
        begin = time.time()
        float(train_step(images, labels)[0])
        times.append(time.time() - begin)
    step = float(np.median(times))
    print(
        json.dumps(
            {
                "channels": FLAGS.channels,
                "layers": FLAGS.layers,
                "batch": FLAGS.batch,
                "genotype": FLAGS.genotype,
                "mixed_precision": FLAGS.mixed_precision,
                "parameters": network.count_parameters(model),
                "start_to_first_step_s": round(compile_seconds, 1),
                "first_call_s": round(first_call, 1),
                "step_s": round(step, 3),
                "images_per_s": round(FLAGS.batch / step, 1),
                "peak_rss_gib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
                ),
                "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
            }
        ),
        flush=True,
    )
    os._exit(0)


if __name__ == "__main__":
    app.run(main)
