"""The search loop: owns the strategy, input streams, summaries, checkpoints and outputs.

The step math is ``engine.InterleavingEngine``'s; this module drives it epoch by epoch.

Layout of ``root_dir`` (written by the chief only):

    checkpoints/                 tf.train.CheckpointManager: ckpt-N.* and ``checkpoint``
    summaries/                   TensorBoard event files
    genotypes/epoch_NNNN.json    genotype after each epoch (JSON) ...
    genotypes/epoch_NNNN.dot     ... and as Graphviz dot text (normal and reduce cell)
    genotype.json, genotype.dot  the final genotype
    results.json                 final metrics (per-learner search-val accuracy, steps, times)
    operative_config.gin         the gin configuration the run used

Checkpoints hold everything the search needs to continue: the alphas and the arch optimizer,
every learner's flat weights and momentum buffers, and the step counter. The input streams
are positioned by the step counter (``data.search_datasets(start_batch=...)``: batch ``t`` of a
stream depends only on the seed, the stream and ``t``), so a resumed run reads exactly the
batches an uninterrupted one would. A checkpoint is complete or absent: TensorFlow writes the
index file that names the latest checkpoint only after the checkpoint's files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
from absl import logging

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import summaries

STRATEGIES = ("default", "mirrored", "multi_worker")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


def make_strategy(name):
    """A ``tf.distribute.Strategy`` by name.

    ``default``: one device. ``mirrored``: all local GPUs (without GPUs: every logical CPU
    device). ``multi_worker``: ``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG``.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: one replica per logical CPU device (tests split the CPU into several).
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def is_chief(strategy):
    """Whether this process writes outputs: the only worker, or the chief of a cluster."""
    resolver = getattr(strategy.extended, "_cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def cosine_learning_rate(epoch, epochs, base, minimum):
    """DARTS' schedule: cosine annealing from ``base`` to ``minimum``, constant within an epoch."""
    return minimum + (base - minimum) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def write_atomically(path, text):
    """Writes ``text`` to ``path`` so that the file is complete or absent (rename)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


class RunLoop:
    """Shared outputs of the search and training loops: checkpoints, summaries, input.

    Subclasses set ``root_dir``, ``strategy``, ``chief``, ``step`` (an int64 variable) and
    ``checkpoint``, then call ``_setup_outputs``.
    """

    def _setup_outputs(self, max_to_keep):
        # Every worker saves (a save may run collectives) but only the chief's copy is kept;
        # every worker resumes from the chief's checkpoints (root_dir is shared storage on a
        # cluster).
        self.checkpoint_dir = os.path.join(self.root_dir, "checkpoints")
        save_dir = self.checkpoint_dir
        if not self.chief:
            task_id = self.strategy.extended._cluster_resolver.task_id
            save_dir = os.path.join(self.root_dir, f".worker_{task_id}_checkpoints")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, save_dir, max_to_keep=max_to_keep
        )
        if self.chief:
            self.writer = tf.summary.create_file_writer(os.path.join(self.root_dir, "summaries"))
        else:
            self.writer = tf.summary.create_noop_writer()
        self._iterators = []

    def _distribute(self, dataset):
        """An iterator over this worker's share of each global batch of ``dataset``.

        Sharding by data (not by file) after rebatching: the replicas of all workers together
        see exactly the global batches a single device would.
        """
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = dataset.with_options(options)
        # Without GPUs nothing is gained by prefetching onto the (logical CPU) devices.
        input_options = tf.distribute.InputOptions(
            experimental_fetch_to_device=bool(tf.config.list_logical_devices("GPU"))
        )
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset, input_options))
        # Kept as long as the loop: deleting a distributed iterator over an infinite,
        # prefetching stream stalls for minutes in TF 2.21 (several replicas).
        self._iterators.append(iterator)
        return iterator

    def restore(self):
        """Restores the latest checkpoint, if any; returns the step it resumes at."""
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())

    def _save(self):
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return path


class SearchLoop(RunLoop):
    """Runs the search epoch by epoch and owns everything but the step math.

    Args:
      root_dir: output directory (layout in the module docstring).
      strategy: the ``tf.distribute.Strategy`` the engine was built under.
      engine: an ``engine.InterleavingEngine`` (variables created in ``strategy.scope()``).
      make_streams: ``make_streams(step) -> [(train, val), ...]``: one pair of infinite global-batch
        datasets per learner, positioned for a run resuming at ``step``.
      evaluate: ``evaluate() -> [accuracy, ...]``: each learner's accuracy on its whole
        search-val slice at the current weights (run at the end).
      learner_names: names used in summaries and logs.
      epochs, steps_per_epoch: length of the search.
      learning_rate, learning_rate_min: the learners' cosine schedule.
      summary_every_steps: scalar summaries every that many steps.
      checkpoint_every_steps: checkpoints every that many steps (and after every epoch).
      max_to_keep: checkpoints kept.
      max_steps: stop after this many steps in total (None: ``epochs * steps_per_epoch``).
    """

    def __init__(
        self,
        *,
        root_dir,
        strategy,
        engine,
        make_streams,
        evaluate,
        learner_names,
        epochs,
        steps_per_epoch,
        learning_rate,
        learning_rate_min,
        summary_every_steps=10,
        checkpoint_every_steps=200,
        max_to_keep=3,
        max_steps=None,
    ):
        self.root_dir = root_dir
        self.strategy = strategy
        self.engine = engine
        self.make_streams = make_streams
        self.evaluate = evaluate
        self.learner_names = list(learner_names)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = float(learning_rate)
        self.learning_rate_min = float(learning_rate_min)
        self.summary_every_steps = max(1, int(summary_every_steps))
        self.checkpoint_every_steps = max(1, int(checkpoint_every_steps))
        total = self.epochs * self.steps_per_epoch
        self.total_steps = total if max_steps is None else min(total, int(max_steps))
        self.chief = is_chief(strategy)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
        states = {
            f"learner{k}_state{i}": state
            for k, learner in enumerate(engine.learners)
            for i, state in enumerate(learner.states)
        }
        self.checkpoint = tf.train.Checkpoint(
            step=self.step,
            architecture=engine.architecture,
            arch_optimizer=engine.arch_optimizer,
            **states,
        )
        self._setup_outputs(max_to_keep)
        if self.chief:
            os.makedirs(os.path.join(root_dir, "genotypes"), exist_ok=True)
        self._step_fn = tf.function(self._replicated_step)

    # ------------------------------------------------------------------ pieces
    def _replicated_step(self, train_batches, val_batches, learning_rate):
        return self.engine.distributed_step(
            self.strategy, train_batches, val_batches, learning_rate
        )

    def _next_batches(self, train_iterators, val_iterators):
        """One iteration's global batches: one train batch per stage, one val batch per learner.

        Fetched eagerly, outside the compiled step.
        """
        train = [next(train_iterators[k]) for _, k in self.engine.config.stages]
        return train, [next(iterator) for iterator in val_iterators]

    def _learner_metrics(self, metrics):
        """Per-learner means of the stage metrics."""
        stages = self.engine.config.stages
        result = {}
        for k, name in enumerate(self.learner_names):
            mine = [s for s, (_, owner) in enumerate(stages) if owner == k]
            result[name] = {
                "train_loss": float(np.mean(metrics["train_loss"][mine])),
                "train_accuracy": float(np.mean(metrics["train_accuracy"][mine])),
                "val_loss": float(metrics["val_loss"][k]),
                "val_accuracy": float(metrics["val_accuracy"][k]),
            }
        return result

    def _check_finite(self, metrics, step, epoch):
        for key in ("train_loss", "val_loss", "hypergradient_norm"):
            if not np.all(np.isfinite(metrics[key])):
                raise NonFiniteLossError(
                    f"{key} became {metrics[key]} at step {step} (epoch {epoch}); the search "
                    f"stopped. Last good checkpoint: "
                    f"{tf.train.latest_checkpoint(self.checkpoint_dir) or 'none'} "
                    "(lower the learning rates or check the data)"
                )

    def _write_genotype(self, stem):
        genotype = self.engine.architecture.genotype()
        if self.chief:
            write_atomically(f"{stem}.json", genotype.to_json())
            dot = genotype_lib.to_dot(genotype, "normal") + genotype_lib.to_dot(genotype, "reduce")
            write_atomically(f"{stem}.dot", dot)
        return genotype

    def _scalar_summaries(self, step, learning_rate, averages, steps_per_second, norm):
        with self.writer.as_default(step=step):
            tf.summary.scalar("search/hypergradient_norm", norm)
            for name, values in averages.items():
                for key, value in values.items():
                    tf.summary.scalar(f"learner/{name}/{key}", value)
            tf.summary.scalar("search/learning_rate", learning_rate)
            tf.summary.scalar("search/proximal_strength", self.engine.config.proximal_strength)
            tf.summary.scalar("search/arch_learning_rate", self.engine.config.arch_learning_rate)
            tf.summary.scalar("search/steps_per_second", steps_per_second)

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Searches until ``total_steps``; returns the results dict (also in results.json)."""
        start_step = self.restore()
        started = time.time()
        if start_step < self.total_steps:
            streams = self.make_streams(start_step)
            train_iterators = [self._distribute(train) for train, _ in streams]
            val_iterators = [self._distribute(val) for _, val in streams]

        step, window, window_start = start_step, [], time.time()
        epoch_sums, epoch_start = [], time.time()
        first_step_seconds = None
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            learning_rate = cosine_learning_rate(
                epoch, self.epochs, self.learning_rate, self.learning_rate_min
            )
            begin = time.time()
            train, val = self._next_batches(train_iterators, val_iterators)
            metrics = self._step_fn(train, val, tf.constant(learning_rate))
            metrics = {k: np.asarray(v) for k, v in metrics.items()}
            if first_step_seconds is None:
                first_step_seconds = time.time() - begin
            step += 1
            self._check_finite(metrics, step, epoch)
            self.step.assign(step)
            averages = self._learner_metrics(metrics)
            window.append(averages)
            epoch_sums.append(averages)
            if step % self.summary_every_steps == 0 or step == self.total_steps:
                elapsed = time.time() - window_start
                mean = _mean_metrics(window)
                steps_per_second = len(window) / max(elapsed, 1e-9)
                norm = float(metrics["hypergradient_norm"])
                self._scalar_summaries(step, learning_rate, mean, steps_per_second, norm)
                window, window_start = [], time.time()
            end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
            if end_of_epoch:
                self._end_epoch(step, epoch, epoch_sums, epoch_start, started, start_step)
                epoch_sums, epoch_start = [], time.time()
            if end_of_epoch or step % self.checkpoint_every_steps == 0:
                self._save()
        return self._finish(started, start_step, first_step_seconds)

    def _end_epoch(self, step, epoch, epoch_metrics, epoch_start, started, start_step):
        genotype = self._write_genotype(
            os.path.join(self.root_dir, "genotypes", f"epoch_{epoch + 1:04d}")
        )
        alpha_normal, alpha_reduce = (a.numpy() for a in self.engine.architecture.alphas)
        with self.writer.as_default(step=step):
            summaries.write_alpha_summaries(step, alpha_normal, alpha_reduce)
            tf.summary.text("search/genotype", genotype.to_string())
        self.writer.flush()
        mean = _mean_metrics(epoch_metrics)
        done = step - start_step
        seconds_per_step = (time.time() - started) / max(done, 1)
        eta = seconds_per_step * (self.total_steps - step)
        parts = [
            f"{name}: train loss {m['train_loss']:.3f} acc {m['train_accuracy']:.3f}, "
            f"val loss {m['val_loss']:.3f} acc {m['val_accuracy']:.3f}"
            for name, m in mean.items()
        ]
        print(
            f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total_steps} | "
            + " | ".join(parts)
            + f" | {time.time() - epoch_start:.1f} s | ETA {_format_seconds(eta)}",
            flush=True,
        )
        logging.info("genotype after epoch %d: %s", epoch + 1, genotype.to_string())

    def _finish(self, started, start_step, first_step_seconds):
        genotype = self._write_genotype(os.path.join(self.root_dir, "genotype"))
        accuracies = [float(a) for a in self.evaluate()]
        results = {
            "steps": int(self.step.numpy()),
            "resumed_from_step": start_step,
            "seconds": time.time() - started,
            "first_step_seconds": first_step_seconds,
            "genotype": genotype.to_string(),
            "search_val_accuracy": dict(zip(self.learner_names, accuracies)),
        }
        if self.chief:
            with self.writer.as_default(step=int(self.step.numpy())):
                for name, accuracy in zip(self.learner_names, accuracies):
                    tf.summary.scalar(f"learner/{name}/final_search_val_accuracy", accuracy)
            self.writer.flush()
            write_atomically(
                os.path.join(self.root_dir, "results.json"), json.dumps(results, indent=2)
            )
        return results


def _mean_metrics(records):
    names = records[0].keys()
    return {
        name: {key: float(np.mean([r[name][key] for r in records])) for key in records[0][name]}
        for name in names
    }


def _format_seconds(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
