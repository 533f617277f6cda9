"""The search as a run-loop task: checkpointed objects, input streams, step, genotype outputs.

``SearchTask`` is what ``run_loop.RunLoop`` drives for ``ilnas_tf.search``; the step math is
``engine.InterleavingEngine``'s. Layout of ``root_dir`` (written by the chief only):

    checkpoints/                 tf.train.CheckpointManager: ckpt-N.* and ``checkpoint``
    summaries/<run name>/        TensorBoard event files (``run_loop.summary_dir``: the run is
                                 named after root_dir, e.g. ``demo`` or ``cifar10_search``)
    genotypes/epoch_NNNN.json    genotype after each epoch (JSON) ...
    genotypes/epoch_NNNN.dot     ... and as Graphviz dot text (normal and reduce cell)
    genotypes/epoch_NNNN_alphas.json  ... and the alphas it came from (trajectory plots):
                                 ``{"epoch": n, "step", "alphas": [normal, reduce],
                                 "edge_primitives", "edge_weights": null or [normal, reduce]}``
                                 (``epoch`` 1-based as NNNN; alphas and edge_primitives as in
                                 results.json; edge_weights: PC-DARTS' beta_hat per edge)
    genotype.json, genotype.dot  the final genotype
    results.json                 final metrics (per-learner search-val accuracy, steps, times;
                                 ``holdout_accuracy`` too with the ablation split)
    operative_config.gin         the gin configuration the run used

Checkpoints hold everything the search needs to continue: the architecture parameters and the
arch optimizer, every learner's flat weights and momentum buffers, and the step counter. The
input streams are positioned by the step counter (``data.search_datasets(start_batch=...)``:
batch ``t`` of a stream depends only on the seed, the stream and ``t``), so a resumed run reads
exactly the batches an uninterrupted one would.

At the end of the search ``engine.sync_layers()`` copies every learner's trained flat weights
into its Keras encoder and head: afterwards ``engine.learners[k].encoder`` is the trained
encoder (the layers hold their initial weights until then; only the flat buffers train).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from ilnas_tf import genotype as genotype_lib
from ilnas_tf import run_dir, run_loop, summaries

FORWARD_FRACTION = 1 / 3  # a forward pass's share of a forward + backward pass (ETA estimate)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A final evaluation of every learner on one finite slice.

    Attributes:
      key: its entry of results.json (``"search_val_accuracy"``), one accuracy per learner.
      label: its name on the console (``"search-val"``).
      datasets: ``datasets[k]() -> tf.data.Dataset`` of learner k's finite (images, labels)
        batches.
      batches: batches in all (the announcement and the ETA).
      examples: examples in all (the ETA).
    """

    key: str
    label: str
    datasets: Sequence[Callable]
    batches: int
    examples: int


class SearchTask(run_loop.Task):
    """The interleaving-learning search as a ``run_loop.Task``.

    Args:
      root_dir: output directory (layout in the module docstring).
      engine: an ``engine.InterleavingEngine`` (variables created in ``strategy.scope()``).
      strategy: the ``tf.distribute.Strategy`` the engine was built under.
      make_streams: ``make_streams(step) -> [(train, val), ...]``: one pair of infinite
        global-batch datasets per learner, positioned for a run resuming at ``step``.
      evaluations: ``Evaluation``s run at the end (search-val; the ablation holdout).
      learner_names: names used in summaries and logs.
      epochs: epochs of the learning-rate schedule (all phases together).
      learning_rate, learning_rate_min: the learners' cosine schedule (per epoch).
      batch_size: global batch size of every stream (the ETA of the final evaluation).
      chief: whether this process writes the outputs.
      skip_dropout: ``None`` or ``(rate_variable, schedule)``: P-DARTS' skip-connect dropout,
        ``rate_variable`` (the learners' ``skip_dropout_rate``) set to ``schedule(epoch)`` at
        the start of every epoch (also on resume) and summarised as ``pdarts/skip_dropout_rate``.
      stage: ``None`` or ``(stage_number, text)`` of a progressive search's stage: summarised as
        ``pdarts/stage`` and, after the first epoch, the text of the ops on each edge.
    """

    description = "search step"
    stopped = "the search stopped"
    advice = "lower the learning rates or check the data"

    def __init__(
        self,
        *,
        root_dir,
        engine,
        strategy,
        make_streams,
        evaluations,
        learner_names,
        epochs,
        learning_rate,
        learning_rate_min,
        batch_size,
        chief=True,
        skip_dropout=None,
        stage=None,
    ):
        self.root_dir = root_dir
        self.engine = engine
        self.strategy = strategy
        self.make_streams = make_streams
        self.evaluations = list(evaluations)
        self.learner_names = list(learner_names)
        self.epochs = int(epochs)
        self.learning_rate = float(learning_rate)
        self.learning_rate_min = float(learning_rate_min)
        self.batch_size = int(batch_size)
        self.chief = chief
        self.skip_dropout = skip_dropout
        self.stage = stage
        self._learning_rate = None
        self._skip_dropout_rate = None
        if chief:
            os.makedirs(os.path.join(root_dir, "genotypes"), exist_ok=True)

    # ------------------------------------------------------------------ run_loop.Task
    def checkpoint_objects(self):
        states = {
            f"learner{k}_state{i}": state
            for k, item in enumerate(self.engine.learners)
            for i, state in enumerate(item.states)
        }
        return {
            "architecture": self.engine.architecture,
            "arch_optimizer": self.engine.arch_optimizer,
            **states,
        }

    def datasets(self, start_step):
        streams = self.make_streams(start_step)
        return [train for train, _ in streams] + [val for _, val in streams]

    def next_inputs(self, iterators):
        """One iteration's global batches: one train batch per stage, one val batch per learner.

        Fetched eagerly, outside the compiled step.
        """
        count = len(self.learner_names)
        train_iterators, val_iterators = iterators[:count], iterators[count:]
        train = [next(train_iterators[k]) for _, k in self.engine.config.stages]
        return train, [next(iterator) for iterator in val_iterators]

    def compile_step(self, phase):
        update_architecture = phase.update_architecture

        def step(train_batches, val_batches, learning_rate):
            return self.engine.distributed_step(
                self.strategy, train_batches, val_batches, learning_rate, update_architecture
            )

        return tf.function(step)

    def start_epoch(self, epoch, phase):
        self._learning_rate = run_loop.cosine_learning_rate(
            epoch, self.epochs, self.learning_rate, self.learning_rate_min
        )
        self.engine.architecture.start_epoch(epoch, self.epochs)
        if self.skip_dropout is not None:
            variable, schedule = self.skip_dropout
            self._skip_dropout_rate = float(schedule(epoch))
            variable.assign(self._skip_dropout_rate)
        # In the weights' dtype from the start: a float64 run must not round eta to float32.
        return (tf.constant(self._learning_rate, self.engine.dtype),)

    def non_finite(self, outputs):
        for key in ("train_loss", "val_loss", "hypergradient_norm"):
            if not np.all(np.isfinite(outputs[key])):
                return f"{key} became {outputs[key]}"
        return None

    def step_record(self, outputs):
        """Per-learner means of the stage metrics, keyed by their summary tags."""
        stages = self.engine.config.stages
        record = {}
        for k, name in enumerate(self.learner_names):
            mine = [s for s, (_, owner) in enumerate(stages) if owner == k]
            record[f"learner/{name}/train_loss"] = float(np.mean(outputs["train_loss"][mine]))
            record[f"learner/{name}/train_accuracy"] = float(
                np.mean(outputs["train_accuracy"][mine])
            )
            record[f"learner/{name}/val_loss"] = float(outputs["val_loss"][k])
            record[f"learner/{name}/val_accuracy"] = float(outputs["val_accuracy"][k])
        return record

    def write_summaries(self, means, outputs, steps_per_second):
        config = self.engine.config
        tf.summary.scalar("search/hypergradient_norm", float(outputs["hypergradient_norm"]))
        for tag, value in means.items():
            tf.summary.scalar(tag, value)
        tf.summary.scalar("search/learning_rate", self._learning_rate)
        tf.summary.scalar("search/proximal_strength", config.proximal_strength)
        tf.summary.scalar("search/arch_learning_rate", config.arch_learning_rate)
        tf.summary.scalar("search/steps_per_second", steps_per_second)
        if self._skip_dropout_rate is not None:
            tf.summary.scalar("pdarts/skip_dropout_rate", self._skip_dropout_rate)
        if self.stage is not None:
            tf.summary.scalar("pdarts/stage", self.stage[0])
        for tag, value in self.engine.architecture.summary_scalars().items():
            tf.summary.scalar(tag, value)
        # The chain (this step's): each stage's part of dL/dA, the cotangent reaching its
        # output and the link's gain, and their product (README, "The chain's defaults").
        for stage in range(len(config.stages)):
            for key, name in (
                ("stage_hypergradient_norms", "hypergradient_norm"),
                ("chain_cotangent_norms", "cotangent_norm"),
                ("chain_link_gains", "link_gain"),
            ):
                tf.summary.scalar(f"search/stage_{stage}/{name}", float(outputs[key][stage]))
        tf.summary.scalar("search/chain_amplification", float(outputs["chain_amplification"]))

    def end_epoch(self, step, epoch, means, last):
        stem = os.path.join(self.root_dir, "genotypes", f"epoch_{epoch + 1:04d}")
        genotype = self._write_genotype(stem)
        architecture = self.engine.architecture
        alpha_normal, alpha_reduce = (a.numpy() for a in architecture.alphas)
        edge_weights = architecture.edge_weights()
        if self.chief:  # other workers' writers are no-ops: they draw no images
            alphas = (alpha_normal, alpha_reduce)
            self._write_alphas(f"{stem}_alphas.json", step, epoch, alphas, edge_weights)
            summaries.write_alpha_summaries(
                step,
                alpha_normal,
                alpha_reduce,
                edge_weights,
                genotype=genotype,
                primitives=architecture.primitives,
                edge_primitives=architecture.edge_primitives,
                epoch=epoch + 1,
            )
        tf.summary.text("search/genotype", genotype.to_string())
        if self.stage is not None and epoch == 0:
            tf.summary.text("pdarts/ops_per_edge", self.stage[1])
        return " | ".join(
            f"{name}: train loss {means[f'learner/{name}/train_loss']:.3f} acc "
            f"{means[f'learner/{name}/train_accuracy']:.3f}, val loss "
            f"{means[f'learner/{name}/val_loss']:.3f} acc "
            f"{means[f'learner/{name}/val_accuracy']:.3f}"
            for name in self.learner_names
        )

    def final_seconds(self, seconds_per_step):
        """A rough estimate: forward passes over the evaluation examples at the step's pace."""
        per_step = self.batch_size * (len(self.engine.config.stages) + len(self.learner_names))
        examples = sum(e.examples for e in self.evaluations)
        return examples / per_step * seconds_per_step * FORWARD_FRACTION

    def finish(self, step):
        genotype = self._write_genotype(os.path.join(self.root_dir, "genotype"))
        self.engine.sync_layers()  # the Keras layers now hold the trained weights
        architecture = self.engine.architecture
        results = {
            "genotype": genotype.to_string(),
            # The final alphas and the search space they live in (P-DARTS prunes by them).
            "alphas": [a.numpy().astype(float).tolist() for a in architecture.alphas],
            "edge_primitives": architecture.edge_primitives,
        }
        for evaluation in self.evaluations:
            accuracies = self.evaluate(evaluation)
            results[evaluation.key] = dict(zip(self.learner_names, accuracies))
            if evaluation.key == "search_val_accuracy":
                for name, accuracy in zip(self.learner_names, accuracies):
                    tf.summary.scalar(f"learner/{name}/final_search_val_accuracy", accuracy)
        return results

    # ------------------------------------------------------------------ pieces
    def evaluate(self, evaluation):
        """Each learner's accuracy on ``evaluation``'s slice at the current weights."""
        print(
            f"evaluating on the {evaluation.label} split: {evaluation.batches} batches ...",
            flush=True,
        )
        began = time.time()
        architecture = self.engine.architecture
        accuracies = []
        for item, make_dataset in zip(self.engine.learners, evaluation.datasets):
            state = item.states[-1]

            @tf.function
            def correct(images, labels, item=item, state=state):
                mixing = architecture.evaluation_mixing(architecture.parameters)
                logits = item.logits(state.encoder_weights, state.head_weights, mixing, images)
                return run_loop.count_correct(logits, labels)

            hits = count = 0
            for images, labels in make_dataset():
                hits += int(correct(images, labels))
                count += int(labels.shape[0])
            accuracies.append(hits / max(count, 1))
        print(f"... done in {time.time() - began:.1f} s", flush=True)
        return accuracies

    def _write_alphas(self, path, step, epoch, alphas, edge_weights):
        """The epoch's ``alphas`` (the layout's ``genotypes/epoch_NNNN_alphas.json``)."""
        record = {
            "epoch": epoch + 1,
            "step": int(step),
            "alphas": [np.asarray(a).astype(float).tolist() for a in alphas],
            "edge_primitives": self.engine.architecture.edge_primitives,
            "edge_weights": None
            if edge_weights is None
            else [np.asarray(w, np.float64).tolist() for w in edge_weights],
        }
        run_dir.write_atomically(path, json.dumps(record))

    def _write_genotype(self, stem):
        genotype = self.engine.architecture.genotype()
        if self.chief:
            run_dir.write_atomically(f"{stem}.json", genotype.to_json())
            dot = genotype_lib.to_dot(genotype, "normal") + genotype_lib.to_dot(genotype, "reduce")
            run_dir.write_atomically(f"{stem}.dot", dot)
        return genotype
