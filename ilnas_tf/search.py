"""Architecture search command: ``python -m ilnas_tf.search --gin_file=gin/il_darts.gin``.

Flags: ``--gin_file`` (repeatable; default ``gin/demo.gin``, the embedded synthetic-data demo),
``--gin_bindings`` (repeatable, e.g. ``run_search.epochs=2``), ``--root_dir`` (default
``./runs/search``; printed at start), ``--strategy`` (``default | mirrored | multi_worker``,
overrides ``run_search.strategy``). Rerunning the same command resumes from the latest
checkpoint in ``root_dir``. Outputs are described in ``search_loop``.

Every hyperparameter is a keyword of the gin-configurable ``run_search``; the loop object
(``search_loop.SearchLoop``) owns strategy, summaries and checkpoints; the engine
(``engine.InterleavingEngine``) owns the step math.
"""

from __future__ import annotations

import os
import sys

from absl import app, logging

import gin
from ilnas_tf import cli

EVAL_BATCH_SIZE = 250  # the final search-val evaluation (forward passes only)
DEMO_GIN = os.path.join(cli.REPO_ROOT, "gin", "demo.gin")


@gin.configurable
def run_search(
    root_dir,
    datasets=("cifar10",),
    data_dir=None,
    split="paper",
    image_size=None,
    channels=16,
    layers=8,
    nodes=4,
    cell_impl="fused",
    batch_size=64,
    epochs=50,
    steps_per_epoch=None,
    max_steps=None,
    mode="exact",
    rounds=1,
    interleave_order=None,
    proximal_strength=0.0,
    transfer="proximal",
    unroll_steps=1,
    weights_per_stage=False,
    val_loss_weights=None,
    train_loss_weights=None,
    learning_rate=0.025,
    learning_rate_min=0.001,
    momentum=0.9,
    weight_decay=3e-4,
    grad_clip=5.0,
    arch_learning_rate=3e-4,
    arch_weight_decay=1e-3,
    fd_scale=0.01,
    seed=0,
    deterministic=False,
    strategy="default",
    summary_every_steps=10,
    checkpoint_every_steps=200,
    max_to_keep=3,
):
    """Runs (or resumes) an interleaving-learning architecture search.

    Args:
      root_dir: output directory.
      datasets: one ``data.DATASETS`` name per learner (K = its length), in learner order.
      data_dir: TFDS data dir (default: TFDS' default).
      split: ``"paper"`` (training set halved into search-train/search-val) or ``"ablation"``.
      image_size: square input size (default: the datasets' own).
      channels, layers, nodes, cell_impl: the supernet (C, cells, intermediate nodes per cell,
        ``"fused"`` or ``"per_edge"`` cells).
      batch_size: global batch size of every learner's train and val batches.
      epochs: epochs of the learning-rate schedule.
      steps_per_epoch: iterations per epoch (default: the first learner's search-train
        examples // batch_size, DARTS' ``len(train_queue)``).
      max_steps: stop after this many iterations (default: all ``epochs``).
      mode, rounds, interleave_order, proximal_strength, transfer, unroll_steps,
        weights_per_stage, val_loss_weights, train_loss_weights, momentum, weight_decay,
        grad_clip, arch_learning_rate, arch_weight_decay, fd_scale: ``engine.InterleavingConfig``.
      learning_rate, learning_rate_min: the learners' cosine schedule (per epoch).
      seed: seed of the initial weights, alphas and data streams.
      deterministic: enable TensorFlow op determinism (reproducible kill-and-resume).
      strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (TF_CONFIG).
      summary_every_steps, checkpoint_every_steps, max_to_keep: outputs (see ``SearchLoop``).

    Returns:
      The results dict written to ``root_dir/results.json``.
    """
    import keras
    import tensorflow as tf

    from ilnas_tf import data, engine, learner, search_loop, search_space

    distribution = search_loop.make_strategy(strategy)
    if not datasets:
        raise ValueError(f"datasets must name at least one learner's dataset, got {datasets!r}")
    cli.check_root_dir(root_dir)
    print(f"root_dir: {root_dir}", flush=True)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    specs = [data.get_spec(name) for name in datasets]
    shapes = {
        name: (image_size, image_size, 3) if image_size else spec.image_shape
        for name, spec in zip(datasets, specs)
    }
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"learners must share one image shape (they share one encoder architecture); got "
            f"{shapes}: set run_search.image_size"
        )
    config = engine.InterleavingConfig(
        num_learners=len(datasets),
        rounds=rounds,
        interleave_order=interleave_order,
        proximal_strength=proximal_strength,
        transfer=transfer,
        mode=mode,
        unroll_steps=unroll_steps,
        weights_per_stage=weights_per_stage,
        val_loss_weights=val_loss_weights,
        train_loss_weights=train_loss_weights,
        momentum=momentum,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        arch_learning_rate=arch_learning_rate,
        arch_weight_decay=arch_weight_decay,
        fd_scale=fd_scale,
    )

    def streams(step=0, with_counts=False):
        """Each learner's (train, val) streams, positioned for a run resuming at ``step``."""
        result = []
        for k, name in enumerate(datasets):
            stages = sum(1 for _, owner in config.stages if owner == k)
            search = data.search_datasets(
                name,
                batch_size,
                split=split,
                data_dir=data_dir,
                seed=seed + 1000 * k,
                image_size=image_size,
                start_batch=(step * stages, step),
            )
            result.append((search.train, search.val, search.num_train) if with_counts else
                          (search.train, search.val))  # fmt: skip
        return result

    first = streams(with_counts=True)  # validates every dataset before building anything

    def make_streams(step):
        # A fresh run reads the streams built above (in-memory splits are loaded once).
        return [(train, val) for train, val, _ in first] if step == 0 else streams(step)

    per_epoch = steps_per_epoch or max(1, first[0][2] // batch_size)
    names = [f"{name.replace('/', '_')}_{k}" for k, name in enumerate(datasets)]
    with distribution.scope():
        architecture = search_space.Architecture(steps=nodes, name="architecture")
        learners = [
            learner.Learner(
                search_space.SearchEncoder(
                    channels,
                    layers,
                    steps=nodes,
                    multiplier=nodes,
                    cell_impl=cell_impl,
                    name=f"encoder_{k}",
                ),
                search_space.ClassifierHead(spec.num_classes, name=f"head_{k}"),
                shapes[datasets[k]],
                name=names[k],
                num_states=rounds if weights_per_stage else 1,
            )  # fmt: skip
            for k, spec in enumerate(specs)
        ]
        search_engine = engine.InterleavingEngine(architecture, learners, config)
    print(
        f"supernet C={channels}, {layers} cells, {nodes} nodes; K={len(datasets)} learners "
        f"({', '.join(datasets)}), M={rounds} rounds, mode={mode}, lambda={proximal_strength}; "
        f"{per_epoch} steps/epoch x {epochs} epochs on {distribution.num_replicas_in_sync} "
        f"replica(s)" + (f" (stopping after {max_steps} steps)" if max_steps else ""),
        flush=True,
    )
    for name, item in zip(names, learners):
        print(
            f"learner {name}: {item.num_encoder_weights:,} encoder + {item.num_head_weights:,} "
            "head weights",
            flush=True,
        )

    def evaluate():
        accuracies = []
        val_slice = data.SEARCH_SPLITS[split][1]
        for k, (name, spec) in enumerate(zip(datasets, specs)):
            item = learners[k]
            state = item.states[-1]
            batches = data.eval_dataset(
                name, EVAL_BATCH_SIZE, split=spec.train_split + val_slice, data_dir=data_dir,
                image_size=image_size,
            )  # fmt: skip

            @tf.function
            def correct(images, labels, item=item, state=state):
                mixing = architecture.mixing_weights(*architecture.alphas)
                logits = item.logits(state.encoder_weights, state.head_weights, mixing, images)
                predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
                return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int64))

            hits = count = 0
            for images, labels in batches:
                hits += int(correct(images, labels))
                count += int(labels.shape[0])
            accuracies.append(hits / max(count, 1))
        return accuracies

    loop = search_loop.SearchLoop(
        root_dir=root_dir,
        strategy=distribution,
        engine=search_engine,
        make_streams=make_streams,
        evaluate=evaluate,
        learner_names=names,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        learning_rate=learning_rate,
        learning_rate_min=learning_rate_min,
        summary_every_steps=summary_every_steps,
        checkpoint_every_steps=checkpoint_every_steps,
        max_to_keep=max_to_keep,
        max_steps=max_steps,
    )
    config_path = os.path.join(root_dir, "operative_config.gin")
    if loop.chief:  # the bound configuration now, the operative one once the run has used it
        search_loop.write_atomically(config_path, gin.config_str())
    results = loop.run()
    if loop.chief:
        search_loop.write_atomically(config_path, gin.operative_config_str())
    print(f"final genotype: {results['genotype']}")
    for name, accuracy in results["search_val_accuracy"].items():
        print(f"learner {name}: search-val accuracy {accuracy:.3f}")
    print(
        f"outputs in {root_dir}: genotype.json / genotype.dot, genotypes/ (per epoch), "
        f"checkpoints/, results.json; TensorBoard: tensorboard --logdir {root_dir}/summaries"
    )
    logging.info("results: %s", results)
    return results


def main(argv):
    del argv
    from ilnas_tf import data, search_loop

    root_dir, overrides = cli.setup("search", [DEMO_GIN])
    try:
        run_search(root_dir=root_dir, **overrides)
    except (ValueError, data.DatasetUnavailableError, search_loop.NonFiniteLossError) as error:
        sys.exit(f"ilnas_tf.search: error: {error}")
    cli.exit_after_success()


if __name__ == "__main__":
    app.run(main)
