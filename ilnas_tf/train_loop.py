"""The training of derived networks as a run-loop task: step math, evaluation, outputs.

``TrainTask`` is what ``run_loop.RunLoop`` drives for ``ilnas_tf.train``. The step math is
small and lives here (``_replica_step``): cross-entropy (optionally label
smoothed) of the logits plus ``auxiliary_weight`` times that of the auxiliary logits, averaged
over the global batch; gradients are summed over replicas *before* ``TorchSGD`` clips them by
global norm and applies PyTorch-style momentum with coupled weight decay (the DARTS reference's
``clip_grad_norm_`` + ``SGD.step``).

Layout of ``root_dir`` (written by the chief only):

    model.json            the network (Keras config), dataset and preprocessing (``export``)
    checkpoints/          tf.train.CheckpointManager: step, model and optimizer variables
    summaries/<run>/      TensorBoard: train loss/accuracy, lr, drop-path rate, test metrics
                          (``run_loop.summary_dir``: the run is named after root_dir)
    results.json          final metrics (test accuracy, best test accuracy, parameters, times)
    export/               SavedModel + .keras (``export.export_run``)
    operative_config.gin  the gin configuration the run used

Checkpoints are keyed by the variables' paths inside the network (and the optimizer), so a
network rebuilt from ``model.json`` in another process and precision restores them. The input
stream is positioned by the step counter and the drop-path noise state is checkpointed, so a
resumed run (with ``deterministic``) continues bit for bit where an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ilnas_tf import run_dir, run_loop

SCHEDULES = ("cosine", "exponential")


def learning_rate_at(epoch, epochs, base, schedule="cosine", minimum=0.0, decay=0.97):
    """The learning rate of an epoch (constant within it, as the reference's per-epoch steps).

    ``cosine``: ``CosineAnnealingLR(T_max=epochs, eta_min=minimum)``; ``exponential``:
    ``StepLR(step_size=1, gamma=decay)`` (DARTS ImageNet: ``base * decay ** epoch``).
    """
    if schedule == "cosine":
        return run_loop.cosine_learning_rate(epoch, epochs, base, minimum)
    if schedule == "exponential":
        return base * decay**epoch
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected 'cosine' or 'exponential'")


class TrainTask(run_loop.Task):
    """Training a network from scratch as a ``run_loop.Task``.

    Args:
      strategy: the ``tf.distribute.Strategy`` the model and optimizer were built under.
      model: the network (``network.NetworkCIFAR`` / ``NetworkImageNet``), built.
      optimizer: a built Keras optimizer (``TorchSGD``, possibly in a ``LossScaleOptimizer``).
      make_dataset: ``make_dataset(start_batch) -> tf.data.Dataset`` of infinite global batches.
      eval_dataset: ``eval_dataset() -> tf.data.Dataset`` of finite test batches.
      global_batch_size: examples per global batch.
      epochs: training epochs (the drop-path ramp spans them).
      learning_rate: ``learning_rate(epoch) -> float``.
      drop_path_rate: final drop-path rate, reached linearly (``rate * epoch / epochs``).
      auxiliary_weight: weight of the auxiliary loss (0 or no auxiliary head: none).
      label_smoothing: label smoothing of the cross-entropy.
      eval_every_epochs: evaluate on the test set every that many epochs (and at the end).
      extra_results: entries added to results.json (genotype, parameters, ...).
    """

    description = "training step"
    stopped = "training stopped"
    advice = "lower the learning rate or check the data"

    def __init__(
        self,
        *,
        strategy,
        model,
        optimizer,
        make_dataset,
        eval_dataset,
        global_batch_size,
        epochs,
        learning_rate,
        drop_path_rate=0.0,
        auxiliary_weight=0.0,
        label_smoothing=0.0,
        eval_every_epochs=1,
        extra_results=None,
    ):
        self.extra_results = dict(extra_results or {})
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.make_dataset = make_dataset
        self.eval_dataset = eval_dataset
        self.global_batch_size = int(global_batch_size)
        self.epochs = int(epochs)
        self.learning_rate = learning_rate
        self.drop_path_rate = float(drop_path_rate)
        self.auxiliary_weight = float(auxiliary_weight)
        self.label_smoothing = float(label_smoothing)
        self.eval_every_epochs = max(1, int(eval_every_epochs))
        self.num_classes = int(model.num_classes)
        self.loss_scaled = hasattr(optimizer, "scale_loss") and hasattr(
            optimizer, "inner_optimizer"
        )
        with strategy.scope():
            self.best_accuracy = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._eval_batch = tf.function(self._evaluate_batch)
        self._rates = (None, None)
        self._test = None

    # ------------------------------------------------------------------ step math
    def _cross_entropy(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if not self.label_smoothing:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        targets = tf.one_hot(labels, self.num_classes)
        targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return tf.nn.softmax_cross_entropy_with_logits(targets, logits)

    def _replica_step(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
            per_example = self._cross_entropy(labels, logits)
            if aux_logits is not None and self.auxiliary_weight:
                per_example += self.auxiliary_weight * self._cross_entropy(labels, aux_logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            objective = self.optimizer.scale_loss(loss) if self.loss_scaled else loss
        gradients = tape.gradient(objective, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in gradients], axis=0)
        correct = tf.cast(run_loop.count_correct(logits, labels), tf.float32)
        return flat, loss, correct

    def distributed_step(self, images, labels):
        """One training step on every replica (call inside a ``tf.function``): (loss, accuracy)."""
        variables = self.model.trainable_variables
        gradients, loss, correct = self.strategy.run(self._replica_step, (images, labels))
        # Sum over replicas first (one all-reduce of the flat gradient), then clip the global
        # gradient in the optimizer (see ``optimizers``).
        flat = self.strategy.reduce("SUM", gradients, axis=None)
        sizes = [int(np.prod(v.shape)) for v in variables]
        gradients = [tf.reshape(g, v.shape) for g, v in zip(tf.split(flat, sizes), variables)]
        self.optimizer.apply(gradients, variables)
        loss = self.strategy.reduce("SUM", loss, axis=None)
        accuracy = self.strategy.reduce("SUM", correct, axis=None) / self.global_batch_size
        return loss, accuracy

    def _evaluate_batch(self, images, labels):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        loss = tf.reduce_sum(self._cross_entropy(labels, logits))
        top1 = run_loop.count_correct(logits, labels)
        top5 = run_loop.count_correct(logits, labels, min(5, self.num_classes))
        return loss, top1, top5

    def evaluate(self):
        """Test metrics at the current weights (every worker evaluates the whole split)."""
        sums, count = np.zeros(3), 0
        for images, labels in self.eval_dataset():
            sums += [float(v) for v in self._eval_batch(images, labels)]
            count += int(labels.shape[0])
        count = max(count, 1)
        return {"loss": sums[0] / count, "accuracy": sums[1] / count, "top5": sums[2] / count}

    def _record_test(self):
        self._test = self.evaluate()
        best = max(float(self.best_accuracy.numpy()), self._test["accuracy"])
        self.best_accuracy.assign(best)
        return self._test

    # ------------------------------------------------------------------ run_loop.Task
    def checkpoint_objects(self):
        # The keys of ``run_dir.model_checkpoint``: ``export`` restores the model from them.
        return {
            "model_variables": run_dir.variable_map(self.model.variables, self.model.name),
            "optimizer_variables": run_dir.variable_map(self.optimizer.variables),
            "best_test_accuracy": self.best_accuracy,
        }

    def datasets(self, start_step):
        return [self.make_dataset(start_step)]

    def next_inputs(self, iterators):
        return next(iterators[0])

    def compile_step(self, phase):
        return tf.function(self.distributed_step)

    def start_epoch(self, epoch, phase):
        """Sets the learning rate and the drop-path rate of ``epoch``."""
        learning_rate = float(self.learning_rate(epoch))
        rate = self.drop_path_rate * epoch / self.epochs
        self.optimizer.learning_rate.assign(learning_rate)
        self.model.drop_path_rate.assign(rate)
        self._rates = (learning_rate, rate)
        return ()

    def non_finite(self, outputs):
        loss = float(outputs[0])
        return None if math.isfinite(loss) else f"train loss became {loss}"

    def step_record(self, outputs):
        return {"train/loss": float(outputs[0]), "train/accuracy": float(outputs[1])}

    def write_summaries(self, means, outputs, steps_per_second):
        for tag, value in means.items():
            tf.summary.scalar(tag, value)
        tf.summary.scalar("train/learning_rate", self._rates[0])
        tf.summary.scalar("train/drop_path_rate", self._rates[1])
        tf.summary.scalar("train/steps_per_second", steps_per_second)

    def end_epoch(self, step, epoch, means, last):
        test = None
        if (epoch + 1) % self.eval_every_epochs == 0 or last:
            test = self._record_test()
            for key, value in test.items():
                tf.summary.scalar(f"test/{key}", value)
        else:
            self._test = None
        text = f"train loss {means['train/loss']:.3f} acc {means['train/accuracy']:.3f}"
        if test is not None:
            text += f" | test loss {test['loss']:.3f} acc {test['accuracy']:.4f}"
        return f"{text} | lr {self.optimizer.learning_rate.numpy():.5f}"

    def finish(self, step):
        test = self._test
        if test is None:  # resumed after the last epoch's evaluation, or nothing to train
            test = self._record_test()
        return {
            "test_accuracy": test["accuracy"],
            "test_top5_accuracy": test["top5"],
            "test_loss": test["loss"],
            "best_test_accuracy": float(self.best_accuracy.numpy()),
            **self.extra_results,
        }
