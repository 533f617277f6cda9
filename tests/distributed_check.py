"""Runs N search iterations on one device and under MirroredStrategy on 2 logical CPUs.

Usage: python tests/distributed_check.py OUT.npz [mode] [learners] [rounds] [cell_impl] [dtype]
    [transfer] [exact_method] [cell_steps] [image_size] [partial_channels]
partial_channels > 1: PC-DARTS (partial channels and edge-normalisation betas).
Writes the architecture parameters (alphas, and betas for PC-DARTS) and flat weights of both runs. Run as its own process: the logical CPU
devices must be configured before TensorFlow initialises.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from ilnas_tf import engine, learner, pc_darts, search_space  # noqa: E402

ITERATIONS = 3
GLOBAL_BATCH = 8
# 16x16 images (default), 4 per replica: on smaller maps batch-statistics BN over a handful of
# values amplifies float32 round-off (fused vs. synchronised moments) beyond the tolerance;
# float64 runs can use 8x8.


def build(config, cell_impl, steps, shape, partial_channels=1):
    keras.utils.set_random_seed(0)
    architecture_class = (
        pc_darts.EdgeNormalizedArchitecture if partial_channels > 1 else search_space.Architecture
    )
    arch = architecture_class(init_scale=0.3, steps=steps)
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                2,
                3,
                steps=steps,
                multiplier=steps,
                cell_impl=cell_impl,
                partial_channels=partial_channels,
            ),
            search_space.ClassifierHead(3),
            shape,
            name=f"learner{k}",
        )
        for k in range(config.num_learners)
    ]
    return engine.InterleavingEngine(arch, learners, config)


def batches(config, seed, shape):
    rng = np.random.default_rng(seed)

    def one():
        images = rng.normal(size=(GLOBAL_BATCH,) + shape).astype(keras.config.floatx())
        labels = rng.integers(0, 3, size=(GLOBAL_BATCH,)).astype(np.int32)
        return tf.constant(images), tf.constant(labels)

    return [one() for _ in config.stages], [one() for _ in range(config.num_learners)]


def snapshot(eng):
    values = {f"alpha{i}": a.numpy() for i, a in enumerate(eng.architecture.parameters)}
    for k, item in enumerate(eng.learners):
        values[f"encoder{k}"] = item.states[0].encoder_weights.numpy()
        values[f"head{k}"] = item.states[0].head_weights.numpy()
    return values


def main():
    out = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "exact"
    num_learners = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    cell_impl = sys.argv[5] if len(sys.argv) > 5 else "per_edge"
    keras.config.set_floatx(sys.argv[6] if len(sys.argv) > 6 else "float32")
    transfer = sys.argv[7] if len(sys.argv) > 7 else "proximal"
    exact_method = sys.argv[8] if len(sys.argv) > 8 else "stagewise"
    steps = int(sys.argv[9]) if len(sys.argv) > 9 else 4
    size = int(sys.argv[10]) if len(sys.argv) > 10 else 16
    partial_channels = int(sys.argv[11]) if len(sys.argv) > 11 else 1
    shape = (size, size, 3)
    config = engine.InterleavingConfig(
        num_learners=num_learners,
        rounds=rounds,
        proximal_strength=0.5,
        mode=mode,
        transfer=transfer,
        exact_method=exact_method,
    )
    data = [batches(config, seed, shape) for seed in range(ITERATIONS)]
    lr = tf.constant(0.05, keras.config.floatx())

    single = build(config, cell_impl, steps, shape, partial_channels)
    initial = snapshot(single)
    single_step = tf.function(single.step)
    for train, val in data:
        single_step(train, val, lr)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build(config, cell_impl, steps, shape, partial_channels)

    @tf.function
    def mirrored_step(train, val):
        return mirrored.distributed_step(strategy, train, val, lr)

    for train, val in data:
        half = GLOBAL_BATCH // 2

        def split(ctx, tensors=(train, val), half=half):
            start = ctx.replica_id_in_sync_group * half
            return tf.nest.map_structure(lambda t, s=start: t[s : s + half], tensors)

        per_replica = strategy.experimental_distribute_values_from_function(split)
        mirrored_step(*per_replica)
    a, b = snapshot(single), snapshot(mirrored)
    np.savez(
        out,
        **{f"single_{k}": v for k, v in a.items()},
        **{f"mirrored_{k}": v for k, v in b.items()},
        **{f"initial_{k}": v for k, v in initial.items()},
    )
    print("ok", {k: float(np.max(np.abs(a[k] - b[k]))) for k in a})


if __name__ == "__main__":
    main()
