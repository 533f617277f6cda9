"""The run loop shared by the search and the training: one loop, task-specific hooks.

``RunLoop`` owns what every run does: restoring the latest checkpoint, the distributed input
iterators, the compiled step call, the summary / checkpoint / end-of-epoch cadence, the stop on
a non-finite loss, console progress (``progress``) and ``results.json``. A *task*
(``search_loop.SearchTask``, ``train_loop.TrainTask``; the interface is ``Task``) owns the
objects it checkpoints, its input streams, its compiled step and what its metrics, epochs and
final evaluation mean. The design follows TF-Agents' ``Learner`` (a generic driver around an
agent's step) with its interval triggers reduced to step counters.

The run is a *schedule of phases* (``Phase``), each a number of epochs with what the step
does in it (the search's weight-only warm-up: ``update_architecture=False``). Epochs are
global: the phase of a step is a function of the step alone, so a run resumed from a
checkpoint continues in the phase it was in. Each kind of phase gets its own compiled step.

A checkpoint is complete or absent: TensorFlow writes the index file that names the latest
checkpoint only after the checkpoint's files. A checkpoint holds only a state that passed the
finiteness check: before each save every floating-point variable of the checkpoint is checked,
and a non-finite one stops the run naming the previous (good) checkpoint. Restoring falls back
to the newest readable checkpoint when newer ones are unreadable (truncated, corrupted), says
so, and moves the unreadable files to ``checkpoints/unreadable/``.

TensorBoard event files go to ``root_dir/summaries/<run name>/`` (``summary_dir``), so that
``tensorboard --logdir root_dir/summaries`` (or a folder above several runs) shows a run named
after the experiment rather than ``.`` (``run_name``): the basename of the absolute
``root_dir`` (``/runs/demo`` -> ``demo``), as ``<parent>_<basename>`` when the basename is a
generic word (``GENERIC_RUN_NAMES``: ``/runs/cifar10/search`` -> ``cifar10_search``) or a
P-DARTS stage directory, whose parent ``stages`` is skipped for the experiment above it
(``exp/stages/stage_2`` -> ``exp_stage_2``).

SIGTERM and SIGINT (``preemption``) stop the loop at the next step boundary: it saves a
checkpoint there and raises ``preemption.Interrupted`` ("interrupted at step N; rerun the
same command to resume").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ilnas_tf import distribution, preemption, progress, run_dir


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of epochs in which the task's step does one thing.

    Attributes:
      name: shown in logs (``"warmup"``, ``"search"``, ``"train"``).
      epochs: its length in epochs (>= 0; a phase of 0 epochs is skipped).
      update_architecture: for the search: whether the step updates the architecture (False:
        weight-only warm-up steps, as PC-DARTS' first epochs).
      on_enter: ``on_enter(task)`` called once when the loop enters this phase (also when a
        run resumes inside it), before its first step. None today; the hook for phases that
        change the task's model (P-DARTS rebuilds the supernet between its stages).
    """

    name: str
    epochs: int
    update_architecture: bool = True
    on_enter: Callable | None = None

    @property
    def kind(self):
        """Phases of one kind share a compiled step."""
        return (self.update_architecture,)


def phase_at(phases, epoch):
    """The phase that ``epoch`` (0-based, global) lies in; the last phase past the end."""
    start = 0
    for phase in phases:
        if epoch < start + phase.epochs:
            return phase
        start += phase.epochs
    return [p for p in phases if p.epochs > 0][-1]


def cosine_learning_rate(epoch, epochs, base, minimum):
    """DARTS' schedule: cosine annealing from ``base`` to ``minimum``, constant within an epoch."""
    return minimum + (base - minimum) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def count_correct(logits, labels, k=1):
    """Examples of a batch whose label is among the ``k`` largest logits (int64 count).

    ``k=1`` compares the argmax (ties go to the first class); ``k>1`` uses ``in_top_k``.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if k == 1:
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    else:
        hits = tf.math.in_top_k(labels, logits, k)
    return tf.reduce_sum(tf.cast(hits, tf.int64))


class Task:
    """What a run loop needs from a task (the search or the training). Override each hook.

    Attributes:
      description: the compiled step in the tracing notice (``"search step"``).
      stopped: the stop phrase of the non-finite message (``"the search stopped"``).
      advice: the end of that message (``"lower the learning rates or check the data"``).
    """

    description = "step"
    stopped = "the run stopped"
    advice = "lower the learning rate or check the data"

    def checkpoint_objects(self):
        """``{name: trackable}`` saved in every checkpoint (the loop adds ``step``)."""
        raise NotImplementedError

    def datasets(self, start_step):
        """Infinite global-batch ``tf.data.Dataset``s positioned for a run at ``start_step``."""
        raise NotImplementedError

    def next_inputs(self, iterators):
        """The compiled step's input arguments, fetched from the distributed ``iterators``."""
        raise NotImplementedError

    def compile_step(self, phase):
        """``step(*inputs, *epoch_arguments) -> outputs`` (a ``tf.function``) for ``phase``."""
        raise NotImplementedError

    def start_epoch(self, epoch, phase):
        """Per-epoch settings (learning rates); returns extra step arguments (a tuple)."""
        raise NotImplementedError

    def non_finite(self, outputs):
        """A description (``"train_loss became [nan]"``) if ``outputs`` hold NaN/Inf, else None."""
        raise NotImplementedError

    def step_record(self, outputs):
        """``{summary tag: float}`` of one step, averaged over summary windows and epochs."""
        raise NotImplementedError

    def write_summaries(self, means, outputs, steps_per_second):
        """Scalar summaries (the loop has set the writer and the step)."""
        raise NotImplementedError

    def end_epoch(self, step, epoch, means, last):
        """End-of-epoch work and summaries; returns the console line's middle part."""
        raise NotImplementedError

    def final_seconds(self, seconds_per_step):
        """Estimated seconds of ``finish`` (for the ETA)."""
        return 0.0

    def finish(self, step):
        """Final outputs and evaluation; returns the task's entries of results.json."""
        raise NotImplementedError


GENERIC_RUN_NAMES = frozenset(
    ("search", "train", "training", "run", "runs", "out", "output", "outputs", "results",
     "result", "root", "root_dir", "tmp", "experiment", "exp", "logs")
)  # fmt: skip
"""Basenames of a ``root_dir`` that do not name an experiment (``run_name`` adds the parent)."""


def run_name(root_dir):
    """The TensorBoard run name of ``root_dir`` (module docstring): ``demo`` for
    ``/runs/demo``, ``cifar10_search`` for ``/runs/cifar10/search``, ``exp_stage_2`` for
    ``exp/stages/stage_2``."""
    parts = [part for part in os.path.abspath(root_dir).split(os.sep) if part]
    if not parts:
        return "root"
    name = parts[-1]
    stage = re.fullmatch(r"stage_\d+", name) is not None
    if len(parts) > 1 and (stage or name.lower() in GENERIC_RUN_NAMES):
        parent = parts[-2]
        if stage and parent == "stages" and len(parts) > 2:
            parent = parts[-3]
        name = f"{parent}_{name}"
    return name


def summary_dir(root_dir):
    """Where the event files of ``root_dir``'s run go: ``root_dir/summaries/<run_name>``."""
    return os.path.join(root_dir, "summaries", run_name(root_dir))


class RunLoop:
    """Runs ``task`` over a schedule of phases; owns strategy, checkpoints and summaries.

    Args:
      task: a ``Task`` whose objects were built in ``strategy.scope()``.
      root_dir: output directory (``checkpoints/``, ``summaries/<run name>/`` (``summary_dir``),
        ``results.json``).
      strategy: the ``tf.distribute.Strategy`` of the task.
      phases: the schedule (``Phase`` list); its epochs add up to the run's epochs.
      steps_per_epoch: iterations per epoch.
      summary_every_steps: scalar summaries every that many steps.
      checkpoint_every_steps: checkpoints every that many steps (and after every epoch).
      max_to_keep: checkpoints kept.
      max_steps: stop after this many steps in total (None: all epochs).
      progress_interval: seconds between console progress lines at most.
    """

    def __init__(
        self,
        task,
        *,
        root_dir,
        strategy,
        phases,
        steps_per_epoch,
        summary_every_steps=10,
        checkpoint_every_steps=200,
        max_to_keep=3,
        max_steps=None,
        progress_interval=10.0,
    ):
        self.task = task
        self.root_dir = root_dir
        self.strategy = strategy
        self.phases = list(phases)
        self.epochs = sum(int(p.epochs) for p in self.phases)
        if self.epochs < 1:
            raise ValueError(f"phases={self.phases!r} is invalid: expected at least one epoch")
        self.steps_per_epoch = int(steps_per_epoch)
        self.summary_every_steps = max(1, int(summary_every_steps))
        self.checkpoint_every_steps = max(1, int(checkpoint_every_steps))
        total = self.epochs * self.steps_per_epoch
        self.total_steps = total if max_steps is None else min(total, int(max_steps))
        self.progress_interval = float(progress_interval)
        self.chief = distribution.is_chief(strategy)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
        self.checkpoint = tf.train.Checkpoint(step=self.step, **task.checkpoint_objects())
        # Every worker saves (a save may run collectives) but only the chief's copy is kept;
        # every worker resumes from the chief's checkpoints (root_dir is shared storage on a
        # cluster).
        self.checkpoint_dir = os.path.join(root_dir, "checkpoints")
        self.save_dir = self.checkpoint_dir
        if not self.chief:
            task_id = strategy.extended._cluster_resolver.task_id
            self.save_dir = os.path.join(root_dir, f".worker_{task_id}_checkpoints")
        self.max_to_keep = max_to_keep
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.save_dir, max_to_keep)
        self._finite = _finiteness_check(task.checkpoint_objects())
        if self.chief:
            self.writer = tf.summary.create_file_writer(summary_dir(root_dir))
        else:
            self.writer = tf.summary.create_noop_writer()
        self._iterators = []
        self._steps = {}  # phase kind -> compiled step

    # ------------------------------------------------------------------ pieces
    def distribute(self, dataset):
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
        """Restores the newest readable checkpoint, if any; returns the step it resumes at.

        Unreadable newer checkpoints are reported, and the chief moves their files to
        ``checkpoints/unreadable/``; ValueError when no checkpoint is readable.
        """
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)
        candidates = list(state.all_model_checkpoint_paths) if state else []
        if state and state.model_checkpoint_path not in candidates:
            candidates.append(state.model_checkpoint_path)
        unreadable = []
        for path in reversed(candidates):
            if not tf.io.gfile.exists(f"{path}.index"):
                unreadable.append((path, "its files are missing"))
                continue
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as error:  # noqa: BLE001 (any failure: try the next one)
                unreadable.append((path, " ".join(str(error).split())[:200]))
                continue
            if unreadable:
                self._set_aside(unreadable, path, candidates)
            step = int(self.step.numpy())
            print(f"resuming from step {step} of {self.total_steps} ({path})", flush=True)
            return step
        if unreadable:
            raise ValueError(
                f"no checkpoint in {self.checkpoint_dir} is readable: "
                + "; ".join(f"{path}: {why}" for path, why in unreadable)
                + " (pass --fresh_start to start over)"
            )
        return 0

    def _set_aside(self, unreadable, good, candidates):
        """Reports unreadable checkpoints; the chief moves them away and renames the latest."""
        for path, why in unreadable:
            print(
                f"checkpoint {path} is unreadable ({why}); falling back to {good}",
                file=sys.stderr,
                flush=True,
            )
        if not self.chief:
            return
        aside = os.path.join(self.checkpoint_dir, "unreadable", time.strftime("%Y%m%d-%H%M%S"))
        os.makedirs(aside, exist_ok=True)
        for path, _ in unreadable:
            for name in tf.io.gfile.glob(f"{path}.*"):
                shutil.move(name, os.path.join(aside, os.path.basename(name)))
        bad = {path for path, _ in unreadable}
        kept = [
            p for p in candidates if p not in bad and candidates.index(p) <= candidates.index(good)
        ]
        tf.compat.v1.train.update_checkpoint_state(
            self.checkpoint_dir, good, all_model_checkpoint_paths=kept
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.save_dir, self.max_to_keep)

    def save(self, epoch):
        """Saves a checkpoint of the current state if it is finite; else stops the run."""
        if not bool(self._finite()):
            step = int(self.step.numpy())
            self._stop("a weight or optimizer variable became NaN or Inf", step, epoch)
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return path

    def compiled_step(self, phase):
        """The compiled step of ``phase``'s kind and whether it has not run yet."""
        if phase.kind not in self._steps:
            self._steps[phase.kind] = self.task.compile_step(phase)
            return self._steps[phase.kind], True
        return self._steps[phase.kind], False

    def _stop(self, description, step, epoch):
        raise NonFiniteLossError(
            f"{description} at step {step} (epoch {epoch + 1}); {self.task.stopped}. Last good "
            f"checkpoint: {tf.train.latest_checkpoint(self.checkpoint_dir) or 'none'} "
            f"({self.task.advice}; then rerun with --fresh_start, or with --force_resume to "
            "continue from that checkpoint)"
        )

    def _interrupted(self, signum, step, saved):
        where = f"checkpoint {saved} saved" if saved else "nothing new to save"
        return preemption.Interrupted(
            f"interrupted at step {step}; rerun the same command to resume "
            f"({preemption.signal_name(signum)}, {where})",
            signum,
        )

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Runs until ``total_steps``; returns the results dict (also in results.json).

        Raises ``preemption.Interrupted`` after saving a checkpoint at the step boundary that
        follows a SIGTERM / SIGINT, and ``NonFiniteLossError`` on a NaN / Inf loss or state.
        """
        with preemption.deferred(self._second_signal) as pending:
            results = self._loop(pending)
        return results

    def _second_signal(self, signum):
        step = int(self.step.numpy())
        return (
            f"interrupted at step {step}; rerun the same command to resume "
            f"({preemption.signal_name(signum)} twice: stopped without a final checkpoint)"
        )

    def _loop(self, pending):
        task = self.task
        start_step = self.restore()
        started = time.time()
        reporter = progress.StepProgress(
            self.total_steps, start_step, self.progress_interval, task.final_seconds
        )
        if start_step < self.total_steps:
            iterators = [self.distribute(d) for d in task.datasets(start_step)]
        step, window, window_start = start_step, [], time.time()
        epoch_records, epoch_start, first_step_seconds = [], time.time(), None
        current_epoch, current_phase = None, None
        while step < self.total_steps:
            if pending:
                raise self._interrupted(pending.signum, step, None)
            epoch = step // self.steps_per_epoch
            if epoch != current_epoch:
                phase = phase_at(self.phases, epoch)
                if phase is not current_phase and phase.on_enter is not None:
                    phase.on_enter(task)
                current_phase, current_epoch = phase, epoch
                epoch_arguments = tuple(task.start_epoch(epoch, phase))
            step_fn, first_call = self.compiled_step(current_phase)
            begin = time.time()
            inputs = task.next_inputs(iterators)
            if first_call:
                named = [p for p in self.phases if p.epochs > 0]
                since = reporter.compiling(
                    task.description
                    + (f" of the {current_phase.name} phase" if len(named) > 1 else "")
                )
            outputs = tf.nest.map_structure(np.asarray, step_fn(*inputs, *epoch_arguments))
            if first_call:
                reporter.compiled(since)
            if first_step_seconds is None:
                first_step_seconds = time.time() - begin
            step += 1
            description = task.non_finite(outputs)
            if description:
                self._stop(description, step, epoch)
            self.step.assign(step)
            record = task.step_record(outputs)
            window.append(record)
            epoch_records.append(record)
            if step % self.summary_every_steps == 0 or step == self.total_steps:
                steps_per_second = len(window) / max(time.time() - window_start, 1e-9)
                with self.writer.as_default(step=step):
                    task.write_summaries(_means(window), outputs, steps_per_second)
                window, window_start = [], time.time()
            end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
            reporter.step_done(step, f" (epoch {epoch + 1}/{self.epochs}, {current_phase.name})")
            if end_of_epoch:
                with self.writer.as_default(step=step):
                    text = task.end_epoch(
                        step, epoch, _means(epoch_records), step == self.total_steps
                    )
                self.writer.flush()
                print(
                    f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total_steps} | {text} | "
                    f"{time.time() - epoch_start:.1f} s | ETA "
                    f"{progress.format_seconds(reporter.eta(step))}",
                    flush=True,
                )
                epoch_records, epoch_start = [], time.time()
            if end_of_epoch or step % self.checkpoint_every_steps == 0 or pending:
                path = self.save(epoch)
                if pending:
                    raise self._interrupted(pending.signum, step, path)
        preemption.install()  # the final evaluation: the last checkpoint is saved
        try:
            return self._finish(step, start_step, started, first_step_seconds)
        except preemption.Interrupted as error:
            raise preemption.Interrupted(
                f"interrupted at step {step} during the final evaluation; rerun the same "
                f"command to resume ({preemption.signal_name(error.signum)}; the checkpoint of "
                f"step {step} is saved)",
                error.signum,
            ) from None

    def _finish(self, step, start_step, started, first_step_seconds):
        with self.writer.as_default(step=step):
            task_results = self.task.finish(step)
        self.writer.flush()
        results = {
            "steps": step,
            "epochs": self.epochs,
            "resumed_from_step": start_step,
            "seconds": time.time() - started,
            "first_step_seconds": first_step_seconds,
            "devices": int(self.strategy.num_replicas_in_sync),
            **task_results,
        }
        if self.chief:
            run_dir.write_atomically(
                os.path.join(self.root_dir, "results.json"), json.dumps(results, indent=2)
            )
        return results


def _float_variables(objects):
    """The floating-point variables held by ``objects`` (trackables, dicts, lists, variables)."""
    found, seen, stack = [], set(), list(objects)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, tf.Variable):
            if id(item) not in seen and item.dtype.is_floating:
                seen.add(id(item))
                found.append(item)
        elif hasattr(item, "variables"):
            stack.extend(item.variables)
    return found


def _finiteness_check(objects):
    """A compiled ``() -> bool tensor``: every float variable of ``objects`` is finite."""
    variables = _float_variables(list(objects.values()))

    @tf.function(autograph=False)
    def finite():
        checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables]
        return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)

    return finite


def _means(records):
    """Mean of each key over a list of ``{key: float}`` records."""
    return {key: float(np.mean([r[key] for r in records])) for key in records[0]}
