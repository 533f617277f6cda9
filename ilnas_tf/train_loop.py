"""The training loop of derived networks: strategy, input, summaries, checkpoints, evaluation.

The step math is small and lives here too (``_replica_step``): cross-entropy (optionally label
smoothed) of the logits plus ``auxiliary_weight`` times that of the auxiliary logits, averaged
over the global batch; gradients are summed over replicas *before* ``TorchSGD`` clips them by
global norm and applies PyTorch-style momentum with coupled weight decay (the DARTS reference's
``clip_grad_norm_`` + ``SGD.step``).

Layout of ``root_dir`` (written by the chief only):

    model.json            the network (Keras config), dataset and preprocessing (``export``)
    checkpoints/          tf.train.CheckpointManager: step, model and optimizer variables
    summaries/            TensorBoard: train loss/accuracy, lr, drop-path rate, test metrics
    results.json          final metrics (test accuracy, best test accuracy, parameters, times)
    export/               SavedModel + .keras (``export.export_run``)
    operative_config.gin  the gin configuration the run used

Checkpoints are keyed by the variables' paths inside the network (and the optimizer), so a
network rebuilt from ``model.json`` in another process and precision restores them. The input
stream is positioned by the step counter and the drop-path noise state is checkpointed, so a
resumed run (with ``deterministic``) continues bit for bit where an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from ilnas_tf import search_loop


def variable_map(variables, prefix=""):
    """``{key: variable}`` with keys from the paths (``prefix/`` removed, duplicates numbered)."""
    result = {}
    for variable in variables:
        key = variable.path
        if prefix and key.startswith(prefix + "/"):
            key = key[len(prefix) + 1 :]
        base, index = key, 1
        while key in result:
            key, index = f"{base}_{index}", index + 1
        result[key] = variable
    return result


def model_checkpoint(model, **extra):
    """A ``tf.train.Checkpoint`` of every variable of ``model`` (plus ``extra`` objects).

    Keras 3 networks that keep layers in Python lists are not fully tracked by
    ``tf.train.Checkpoint(model=model)``; this lists the variables explicitly.
    """
    return tf.train.Checkpoint(model_variables=variable_map(model.variables, model.name), **extra)


def restore_model_variables(model, checkpoint_prefix):
    """Restores ``model``'s variables from a training checkpoint (optimizer state ignored)."""
    status = model_checkpoint(model).restore(checkpoint_prefix)
    status.expect_partial().assert_existing_objects_matched()


def learning_rate_at(epoch, epochs, base, schedule="cosine", minimum=0.0, decay=0.97):
    """The learning rate of an epoch (constant within it, as the reference's per-epoch steps).

    ``cosine``: ``CosineAnnealingLR(T_max=epochs, eta_min=minimum)``; ``exponential``:
    ``StepLR(step_size=1, gamma=decay)`` (DARTS ImageNet: ``base * decay ** epoch``).
    """
    if schedule == "cosine":
        return search_loop.cosine_learning_rate(epoch, epochs, base, minimum)
    if schedule == "exponential":
        return base * decay**epoch
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected 'cosine' or 'exponential'")


class TrainLoop(search_loop.RunLoop):
    """Trains a network epoch by epoch and owns everything around the step.

    Args:
      root_dir: output directory (layout in the module docstring).
      strategy: the ``tf.distribute.Strategy`` the model and optimizer were built under.
      model: the network (``network.NetworkCIFAR`` / ``NetworkImageNet``), built.
      optimizer: a built Keras optimizer (``TorchSGD``, possibly in a ``LossScaleOptimizer``).
      make_dataset: ``make_dataset(start_batch) -> tf.data.Dataset`` of infinite global batches.
      eval_dataset: ``eval_dataset() -> tf.data.Dataset`` of finite test batches.
      global_batch_size: examples per global batch.
      epochs, steps_per_epoch: length of the training.
      learning_rate: ``learning_rate(epoch) -> float``.
      drop_path_rate: final drop-path rate, reached linearly (``rate * epoch / epochs``).
      auxiliary_weight: weight of the auxiliary loss (0 or no auxiliary head: none).
      label_smoothing: label smoothing of the cross-entropy.
      eval_every_epochs: evaluate on the test set every that many epochs (and at the end).
      summary_every_steps, checkpoint_every_steps, max_to_keep, max_steps: as ``SearchLoop``.
      extra_results: entries added to results.json (genotype, parameters, ...).
    """

    def __init__(
        self,
        *,
        root_dir,
        strategy,
        model,
        optimizer,
        make_dataset,
        eval_dataset,
        global_batch_size,
        epochs,
        steps_per_epoch,
        learning_rate,
        drop_path_rate=0.0,
        auxiliary_weight=0.0,
        label_smoothing=0.0,
        eval_every_epochs=1,
        summary_every_steps=50,
        checkpoint_every_steps=1000,
        max_to_keep=3,
        max_steps=None,
        extra_results=None,
    ):
        self.root_dir = root_dir
        self.extra_results = dict(extra_results or {})
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.make_dataset = make_dataset
        self.eval_dataset = eval_dataset
        self.global_batch_size = int(global_batch_size)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = learning_rate
        self.drop_path_rate = float(drop_path_rate)
        self.auxiliary_weight = float(auxiliary_weight)
        self.label_smoothing = float(label_smoothing)
        self.eval_every_epochs = max(1, int(eval_every_epochs))
        self.summary_every_steps = max(1, int(summary_every_steps))
        self.checkpoint_every_steps = max(1, int(checkpoint_every_steps))
        total = self.epochs * self.steps_per_epoch
        self.total_steps = total if max_steps is None else min(total, int(max_steps))
        self.chief = search_loop.is_chief(strategy)
        self.num_classes = int(model.num_classes)
        self.loss_scaled = hasattr(optimizer, "scale_loss") and hasattr(
            optimizer, "inner_optimizer"
        )
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
            self.best_accuracy = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.checkpoint = model_checkpoint(
            model,
            optimizer_variables=variable_map(optimizer.variables),
            step=self.step,
            best_test_accuracy=self.best_accuracy,
        )
        self._setup_outputs(max_to_keep)
        self._train_step = tf.function(self._distributed_step)
        self._eval_batch = tf.function(self._evaluate_batch)

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
        predictions = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        return flat, loss, correct

    def _distributed_step(self, images, labels):
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
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
        top5 = tf.reduce_sum(
            tf.cast(tf.math.in_top_k(labels, logits, min(5, self.num_classes)), tf.float32)
        )
        return loss, top1, top5

    # ------------------------------------------------------------------ pieces
    def evaluate(self):
        """Test metrics at the current weights (every worker evaluates the whole split)."""
        sums, count = np.zeros(3), 0
        for images, labels in self.eval_dataset():
            sums += [float(v) for v in self._eval_batch(images, labels)]
            count += int(labels.shape[0])
        count = max(count, 1)
        return {"loss": sums[0] / count, "accuracy": sums[1] / count, "top5": sums[2] / count}

    def _set_epoch(self, epoch):
        """Learning rate and drop-path rate of ``epoch``; returns both."""
        learning_rate = float(self.learning_rate(epoch))
        rate = self.drop_path_rate * epoch / self.epochs
        self.optimizer.learning_rate.assign(learning_rate)
        self.model.drop_path_rate.assign(rate)
        return learning_rate, rate

    def _check_finite(self, loss, step, epoch):
        if not math.isfinite(loss):
            raise search_loop.NonFiniteLossError(
                f"train loss became {loss} at step {step} (epoch {epoch}); training stopped. "
                f"Last good checkpoint: "
                f"{tf.train.latest_checkpoint(self.checkpoint_dir) or 'none'} "
                "(lower the learning rate or check the data)"
            )

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Trains until ``total_steps``; returns the results dict (also in results.json)."""
        start_step = self.restore()
        started = time.time()
        if start_step < self.total_steps:
            iterator = self._distribute(self.make_dataset(start_step))
        step, window, window_start = start_step, [], time.time()
        epoch_records, epoch_start, first_step_seconds, current_epoch = [], time.time(), None, -1
        test = None
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            if epoch != current_epoch:
                learning_rate, rate = self._set_epoch(epoch)
                current_epoch = epoch
            begin = time.time()
            loss, accuracy = (float(v) for v in self._train_step(*next(iterator)))
            if first_step_seconds is None:
                first_step_seconds = time.time() - begin
            step += 1
            self._check_finite(loss, step, epoch)
            self.step.assign(step)
            window.append((loss, accuracy))
            epoch_records.append((loss, accuracy))
            if step % self.summary_every_steps == 0 or step == self.total_steps:
                seconds = time.time() - window_start
                self._write_scalars(
                    step,
                    {
                        "train/loss": np.mean([r[0] for r in window]),
                        "train/accuracy": np.mean([r[1] for r in window]),
                        "train/learning_rate": learning_rate,
                        "train/drop_path_rate": rate,
                        "train/steps_per_second": len(window) / max(seconds, 1e-9),
                    },
                )
                window, window_start = [], time.time()
            end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
            if end_of_epoch:
                test = self._end_epoch(step, epoch, epoch_records, epoch_start, started, start_step)
                epoch_records, epoch_start = [], time.time()
            if end_of_epoch or step % self.checkpoint_every_steps == 0:
                self._save()
        return self._finish(started, start_step, first_step_seconds, test)

    def _write_scalars(self, step, values):
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def _end_epoch(self, step, epoch, records, epoch_start, started, start_step):
        last = step == self.total_steps
        test = None
        if (epoch + 1) % self.eval_every_epochs == 0 or last:
            test = self.evaluate()
            self.best_accuracy.assign(max(float(self.best_accuracy.numpy()), test["accuracy"]))
            self._write_scalars(step, {f"test/{k}": v for k, v in test.items()})
        self.writer.flush()
        done = step - start_step
        eta = (time.time() - started) / max(done, 1) * (self.total_steps - step)
        line = (
            f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total_steps} | train loss "
            f"{np.mean([r[0] for r in records]):.3f} acc {np.mean([r[1] for r in records]):.3f}"
        )
        if test is not None:
            line += f" | test loss {test['loss']:.3f} acc {test['accuracy']:.4f}"
        print(
            f"{line} | lr {self.optimizer.learning_rate.numpy():.5f} | "
            f"{time.time() - epoch_start:.1f} s | ETA {search_loop._format_seconds(eta)}",
            flush=True,
        )
        return test

    def _finish(self, started, start_step, first_step_seconds, test):
        if test is None:  # resumed after the last epoch's evaluation, or nothing to train
            test = self.evaluate()
            self.best_accuracy.assign(max(float(self.best_accuracy.numpy()), test["accuracy"]))
        results = {
            "steps": int(self.step.numpy()),
            "epochs": self.epochs,
            "resumed_from_step": start_step,
            "seconds": time.time() - started,
            "first_step_seconds": first_step_seconds,
            "test_accuracy": test["accuracy"],
            "test_top5_accuracy": test["top5"],
            "test_loss": test["loss"],
            "best_test_accuracy": float(self.best_accuracy.numpy()),
            **self.extra_results,
        }
        if self.chief:
            search_loop.write_atomically(
                os.path.join(self.root_dir, "results.json"), json.dumps(results, indent=2)
            )
        return results
