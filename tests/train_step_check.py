"""One training step under MirroredStrategy equals the single-device step (run on 2+ CPUs).

Usage: python tests/logical_cpus.py 2 train_step_check OUT.json (tests on PYTHONPATH).
A tiny linear "network" (no batch statistics, so replicas and one device see the same function)
takes three ``TrainTask`` steps with an active gradient-norm clip under the default strategy and
under MirroredStrategy over every logical CPU; writes both weight sets and the gradient norms.
Clipping each replica's gradient before summing (Keras' per-replica ``apply``) would differ.
"""

from __future__ import annotations

import json
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import optimizers, run_loop, train_loop

BATCH, CLIP = 8, 0.05


class Linear(keras.Model):
    """The smallest model with the attributes TrainTask uses."""

    def __init__(self):
        super().__init__(name="linear")
        self.num_classes = 3
        self.dense = keras.layers.Dense(3, kernel_initializer="glorot_uniform", name="dense")
        self.drop_path_rate = keras.Variable(0.0, trainable=False, name="drop_path_rate")

    def build(self, input_shape):
        self.dense.build((None, 12))

    def call(self, images, training=None):
        return self.dense(tf.reshape(images, [-1, 12]))


def dataset(start_batch=0):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3 * BATCH, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 3 * BATCH).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH).repeat()


def train(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = Linear()
        model.build((None, 2, 2, 3))
        optimizer = optimizers.TorchSGD(
            0.1, momentum=0.9, coupled_weight_decay=1e-3, global_clipnorm=CLIP
        )
        optimizer.build(model.trainable_variables)
    task = train_loop.TrainTask(
        strategy=strategy,
        model=model,
        optimizer=optimizer,
        make_dataset=dataset,
        eval_dataset=lambda: dataset().take(1),
        global_batch_size=BATCH,
        epochs=1,
        learning_rate=lambda epoch: 0.1,
    )
    phase = run_loop.Phase("train", 1)
    loop = run_loop.RunLoop(
        task, root_dir=tempfile.mkdtemp(), strategy=strategy, phases=[phase], steps_per_epoch=3
    )
    iterator = loop.distribute(dataset())
    step = task.compile_step(phase)
    losses = [float(step(*next(iterator))[0]) for _ in range(3)]
    return [v.numpy().tolist() for v in model.trainable_variables], losses


def gradient_norm():
    """Norm of the first step's gradient (must exceed CLIP for the check to mean anything)."""
    keras.utils.set_random_seed(0)
    model = Linear()
    model.build((None, 2, 2, 3))
    images, labels = next(iter(dataset()))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images)))
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))


if __name__ == "__main__":
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single, single_losses = train(tf.distribute.get_strategy())
    mirrored, mirrored_losses = train(tf.distribute.MirroredStrategy(devices))
    result = {
        "replicas": len(devices),
        "single": single,
        "mirrored": mirrored,
        "single_losses": single_losses,
        "mirrored_losses": mirrored_losses,
        "gradient_norm": gradient_norm(),
        "clip": CLIP,
    }
    with open(sys.argv[1], "w") as handle:
        json.dump(result, handle)
