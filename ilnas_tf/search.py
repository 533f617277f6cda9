"""Architecture search command: ``python -m ilnas_tf.search --gin_file=gin/il_darts.gin``.

Flags: ``--gin_file`` (repeatable; default ``gin/demo.gin``, the embedded synthetic-data demo),
``--gin_bindings`` (repeatable, e.g. ``run_search.epochs=2``), ``--root_dir`` (default
``./runs/search``; printed at start), ``--strategy`` (``default | mirrored | multi_worker``,
overrides ``run_search.strategy``). Rerunning the same command resumes from the latest
checkpoint in ``root_dir``. Outputs are described in ``search_loop``.

The data, supernet and schedule are keywords of the gin-configurable ``run_search``; the
algorithm's hyperparameters are ``engine.InterleavingConfig``'s (``InterleavingConfig.rounds =
2``). ``run_loop.RunLoop`` owns strategy, summaries and checkpoints and drives a
``search_loop.SearchTask``; the engine (``engine.InterleavingEngine``) owns the step math.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags, logging

import gin
from ilnas_tf import cli, validation

flags.adopt_module_key_flags(cli)  # --help lists the shared flags
EVAL_BATCH_SIZE = 250  # the final search-val evaluation (forward passes only)
DEMO_GIN = os.path.join(cli.REPO_ROOT, "gin", "demo.gin")
STAGE_SEED_STRIDE = 7919  # P-DARTS stage s > 0 initialises with seed + 7919 * s


@gin.configurable(denylist=["fresh_start", "force_resume"])
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
    partial_channels=1,
    edge_normalization=False,
    gates=False,
    progressive=False,
    recompute="none",
    mixed_precision=None,
    loss_scale=None,
    batch_size=64,
    epochs=50,
    warmup_epochs=0,
    steps_per_epoch=None,
    max_steps=None,
    learning_rate=0.025,
    learning_rate_min=0.001,
    seed=0,
    deterministic=False,
    strategy="default",
    summary_every_steps=10,
    checkpoint_every_steps=200,
    max_to_keep=3,
    fresh_start=False,
    force_resume=False,
):
    """Runs (or resumes) an interleaving-learning architecture search.

    Every keyword is checked first (``check_settings``); then ``root_dir``'s run record
    (``run_dir.check_run``): the same settings resume (a complete run says so and changes
    nothing), other defining settings are refused before anything is written.

    The algorithm's hyperparameters (K=len(datasets) aside) are ``engine.InterleavingConfig``'s,
    bound in gin: ``InterleavingConfig.rounds = 2``, ``InterleavingConfig.mode = 'exact'``,
    ``InterleavingConfig.proximal_strength``, ``.momentum``, ``.arch_learning_rate``, ...
    (defaults in one place: the dataclass). ``InterleavingConfig.num_learners`` is not
    bindable: it is the number of ``datasets``.

    Args:
      root_dir: output directory (layout in ``search_loop``).
      datasets: one ``data.DATASETS`` name per learner (K = its length), in learner order.
      data_dir: TFDS data dir (default: TFDS' default).
      split: ``"paper"`` (training set halved into search-train/search-val) or ``"ablation"``
        (45% / 45% / 10% held out; the final evaluation then also reports each learner's
        accuracy on the holdout: ``holdout_accuracy`` in results.json).
      image_size: square input size (default: the datasets' own).
      channels, layers, nodes, cell_impl: the supernet (C, cells, intermediate nodes per cell,
        ``"fused"`` or ``"per_edge"`` cells).
      partial_channels: PC-DARTS' partial channel connections (Xu et al., 2020), their K:
        ``1`` (DARTS) or a divisor of ``channels``; each edge sends ``1 / K`` of its channels
        through its ops (``search_space.SearchEncoder``).
      edge_normalization: PC-DARTS' edge normalisation: a beta per edge, softmaxed over each
        node's incoming edges, weights the edge and the derivation
        (``pc_darts.EdgeNormalizedArchitecture``; False: DARTS' ``Architecture``).
      gates: PR-DARTS (Zhou et al., 2020): stochastic hard-concrete gates per (edge, op), the
        top 2 per edge switched on, and the group-sparsity and path regularisers in the
        architecture objective (``pr_darts.GatedArchitecture``, ``pr_darts.GateSettings`` bound in gin).
        Not with ``edge_normalization``, ``partial_channels`` > 1 or ``progressive``.
      progressive: P-DARTS' progressive search (Chen et al., 2019): stages of deeper
        supernets over fewer candidate ops, skip-connect dropout and a skip-connect limit at
        the end, as ``progressive.ProgressiveSchedule`` (bound in gin) sets them; ``layers``,
        ``channels``, ``epochs``, ``warmup_epochs``, ``steps_per_epoch`` and ``max_steps``
        are then per stage (layout of ``root_dir`` in ``progressive``).
      recompute: ``"none"`` or ``"cells"``: recompute each search cell's activations in the
        backward passes instead of storing them (``search_space.SearchEncoder``; a memory
        option, the same results to round-off, so it may change on resume).
      mixed_precision: None (float32), ``"mixed_bfloat16"`` or ``"mixed_float16"`` (GPUs):
        the encoders and heads compute in that dtype; the flat weights, momentum buffers,
        alphas, cotangents, hypergradient and optimizers stay float32 (``precision``).
        ``"mixed_float16"`` takes the stage-wise exact or the first-order mode.
      loss_scale: the fixed float16 loss scale, a power of two (default
        ``precision.DEFAULT_LOSS_SCALE`` = 1024 under ``"mixed_float16"``; None otherwise). A
        float16 overflow stops the run like a NaN loss (lower the scale and rerun).
      batch_size: global batch size of every learner's train and val batches.
      epochs: epochs in all (warm-up included); the cosine learning-rate schedule spans them.
      warmup_epochs: first epochs that train the weights only (the architecture is fixed):
        the schedule is ``[Phase('warmup', warmup_epochs, update_architecture=False),
        Phase('search', epochs - warmup_epochs)]``.
      steps_per_epoch: iterations per epoch (default: the first learner's search-train
        examples // batch_size, DARTS' ``len(train_queue)``).
      max_steps: stop after this many iterations (default: all ``epochs``).
      learning_rate, learning_rate_min: the learners' cosine schedule (per epoch).
      seed: seed of the initial weights, alphas and data streams.
      deterministic: enable TensorFlow op determinism (reproducible kill-and-resume).
      strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (TF_CONFIG).
      summary_every_steps, checkpoint_every_steps, max_to_keep: outputs (see
        ``run_loop.RunLoop``).
      fresh_start, force_resume: the ``--fresh_start`` / ``--force_resume`` flags (not
        bindable in gin; see ``run_dir``).

    Returns:
      The results dict written to ``root_dir/results.json``. The trained weights are in
      ``root_dir/checkpoints``. In Python, a trained encoder is ``task.engine.learners[k]
      .encoder`` of a ``search_loop.SearchTask`` after ``run_loop.RunLoop(task, ...).run()``
      (which ends with ``engine.sync_layers()``, copying the flat trained weights into the
      Keras layers); with an engine of your own, call ``engine.sync_layers()`` and read
      ``learner.encoder``.
    """
    arguments = {
        k: v for k, v in locals().items() if k not in ("root_dir", "fresh_start", "force_resume")
    }
    import keras
    import tensorflow as tf

    from ilnas_tf import (
        data,
        distribution,
        engine,
        learner,
        pc_darts,
        pdarts,
        pr_darts,
        precision,
        progressive,
        run_dir,
        run_loop,
        search_loop,
        search_space,
    )

    settings = check_settings(arguments)
    datasets, data_dir, image_size = (settings[k] for k in ("datasets", "data_dir", "image_size"))
    epochs, warmup_epochs, max_steps = (
        settings[k] for k in ("epochs", "warmup_epochs", "max_steps")
    )
    steps_per_epoch = settings["steps_per_epoch"]
    learning_rate, learning_rate_min = settings["learning_rate"], settings["learning_rate_min"]
    _refuse_num_learners_binding()
    config = engine.InterleavingConfig(num_learners=len(datasets))  # the rest from gin
    mixed_precision, loss_scale = settings["mixed_precision"], settings["loss_scale"]
    _check_precision_mode(mixed_precision, config)
    if mixed_precision == "mixed_float16" and loss_scale is None:
        loss_scale = precision.DEFAULT_LOSS_SCALE
    schedule = _progressive_schedule(settings)
    extra = {
        f"InterleavingConfig.{f.name}": getattr(config, f.name) for f in dataclasses.fields(config)
    }
    if schedule is not None:
        extra.update(
            {
                f"ProgressiveSchedule.{f.name}": getattr(schedule, f.name)
                for f in dataclasses.fields(schedule)
            }
        )
    gate_settings = pr_darts.GateSettings() if settings["gates"] else None
    if gate_settings is not None:
        extra.update({f"GateSettings.{k}": v for k, v in dataclasses.asdict(gate_settings).items()})
    skip_dropout = schedule is not None and schedule.uses_skip_dropout
    identity = run_dir.fingerprint("run_search", settings, extra)
    state, record = run_dir.check_run(
        root_dir, "search", identity, fresh_start=fresh_start, force_resume=force_resume
    )
    run_dir.check_tf_config(strategy)
    strategy_object = distribution.make_strategy(strategy)
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

    # Train batches learner k draws per iteration (one per stage it owns).
    stages_per_learner = [sum(1 for _, owner in config.stages if owner == k) for k in
                          range(len(datasets))]  # fmt: skip

    def streams(step=0):
        """Each learner's ``data.SearchData``, positioned for a run resuming at ``step``."""
        result = []
        for k, name in enumerate(datasets):
            stages = stages_per_learner[k]
            result.append(
                data.search_datasets(
                    name,
                    batch_size,
                    split=split,
                    data_dir=data_dir,
                    seed=seed + 1000 * k,
                    image_size=image_size,
                    start_batch=(step * stages, step),
                )  # fmt: skip
            )
        return result

    first = streams()  # validates every dataset before building anything

    def make_streams(step):
        """``[(train, val)]`` per learner at global ``step`` (with noise ids under skip
        dropout: streams ``2k`` and ``2k + 1``)."""
        # A fresh run reads the streams built above (in-memory splits are loaded once).
        pairs = [(s.train, s.val) for s in (first if step == 0 else streams(step))]
        if not skip_dropout:
            return pairs
        result = []
        for k, (train, val) in enumerate(pairs):
            stages = stages_per_learner[k]
            result.append(
                (
                    data.with_noise_ids(train, 2 * k, step * stages),
                    data.with_noise_ids(val, 2 * k + 1, step),
                )
            )
        return result

    per_epoch = steps_per_epoch or max(1, first[0].num_train // batch_size)
    stage_steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    total_steps = stage_steps * (1 if schedule is None else schedule.num_stages)
    if state == "complete" and record["completed_steps"] >= total_steps:
        return run_dir.already_complete("search", root_dir, record)
    run_dir.check_root_dir(root_dir)
    print(f"root_dir: {root_dir}", flush=True)
    if distribution.is_chief(strategy_object):
        run_dir.start_run(
            root_dir, "search", identity, state, record, step=run_dir.latest_step(root_dir)
        )
    names = [f"{name.replace('/', '_')}_{k}" for k, name in enumerate(datasets)]
    chief = distribution.is_chief(strategy_object)
    kept_iterators = []

    def run_stage(stage):
        """Builds the supernet, engine and loop of one search (a P-DARTS stage) and runs it."""
        if stage.index > 0:  # a stage's initial weights and alphas depend on the seed only
            keras.utils.set_random_seed(seed + STAGE_SEED_STRIDE * stage.index)
        rate = None
        with strategy_object.scope():
            if gates:
                architecture = pr_darts.GatedArchitecture(
                    steps=nodes, seed=seed, name="architecture",
                    **dataclasses.asdict(gate_settings),
                )  # fmt: skip
            else:
                architecture_class = (
                    pc_darts.EdgeNormalizedArchitecture
                    if edge_normalization
                    else search_space.Architecture
                )
                architecture = architecture_class(
                    steps=nodes, edge_primitives=stage.edge_primitives, name="architecture"
                )
            if skip_dropout:
                rate = tf.Variable(
                    0.0,
                    trainable=False,
                    name="skip_dropout_rate",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
            learners = [
                learner.Learner(
                    search_space.SearchEncoder(
                        stage.channels,
                        stage.layers,
                        steps=nodes,
                        multiplier=nodes,
                        cell_impl=cell_impl,
                        edge_primitives=stage.edge_primitives,
                        recompute=recompute,
                        partial_channels=partial_channels,
                        skip_dropout=skip_dropout,
                        dtype=mixed_precision,
                        name=f"encoder_{k}",
                    ),
                    search_space.ClassifierHead(
                        spec.num_classes, dtype=mixed_precision, name=f"head_{k}"
                    ),
                    shapes[datasets[k]],
                    name=names[k],
                    num_states=config.rounds if config.weights_per_stage else 1,
                    loss_scale=loss_scale,
                    skip_dropout_rate=rate,
                )  # fmt: skip
                for k, spec in enumerate(specs)
            ]
            search_engine = engine.InterleavingEngine(architecture, learners, config)
        phases = [
            run_loop.Phase("warmup", warmup_epochs, update_architecture=False),
            run_loop.Phase("search", epochs - warmup_epochs),
        ]
        _describe(settings, config, schedule, stage, strategy_object, loss_scale, per_epoch)
        for name, item in zip(names, learners):
            print(
                f"learner {name}: {item.num_encoder_weights:,} encoder + "
                f"{item.num_head_weights:,} head weights",
                flush=True,
            )
        dropout = None
        if rate is not None:
            initial, decay = stage.skip_dropout, schedule.skip_dropout_decay
            dropout = (
                rate,
                lambda epoch: pdarts.skip_dropout_rate(
                    initial, epoch, epochs, warmup_epochs, decay
                ),
            )
        task = search_loop.SearchTask(
            root_dir=stage.root_dir,
            engine=search_engine,
            strategy=strategy_object,
            make_streams=lambda step: make_streams(stage.first_step + step),
            # A P-DARTS stage before the last prunes by its alphas: no final evaluation.
            evaluations=_evaluations(
                data, datasets, specs, first, split, batch_size, data_dir, image_size
            )
            if schedule is None or stage.index == schedule.num_stages - 1
            else [],
            learner_names=names,
            epochs=epochs,
            learning_rate=learning_rate,
            learning_rate_min=learning_rate_min,
            batch_size=batch_size,
            chief=chief,
            skip_dropout=dropout,
            stage=None
            if schedule is None
            else (stage.index + 1, progressive.edge_primitives_text(stage.edge_primitives, nodes)),
        )
        if loss_scale:
            task.advice += (
                f"; under mixed_float16 also lower run_search.loss_scale (now {loss_scale:g})"
            )
        loop = run_loop.RunLoop(
            task,
            root_dir=stage.root_dir,
            strategy=strategy_object,
            phases=phases,
            steps_per_epoch=per_epoch,
            summary_every_steps=summary_every_steps,
            checkpoint_every_steps=checkpoint_every_steps,
            max_to_keep=max_to_keep,
            max_steps=max_steps,
        )
        # Kept to the end: deleting a stage's (distributed) iterators stalls for a minute and
        # more in TF 2.21, even on one device.
        kept_iterators.append(loop._iterators)
        return loop.run()

    config_path = os.path.join(root_dir, "operative_config.gin")
    if chief:  # the bound configuration now, the operative one once the run has used it
        run_dir.write_atomically(config_path, gin.config_str())
    whole = progressive.Stage(
        index=0,
        root_dir=root_dir,
        channels=channels,
        layers=layers,
        edge_primitives=None,
        skip_dropout=0.0,
        first_step=0,
    )
    if schedule is None:
        results = run_stage(whole)
    else:
        results = progressive.run_stages(
            root_dir,
            schedule,
            channels=channels,
            layers=layers,
            nodes=nodes,
            steps_per_stage=stage_steps,
            run_stage=run_stage,
            chief=chief,
        )
    if chief:
        run_dir.write_atomically(config_path, gin.operative_config_str())
        run_dir.finish_run(root_dir, results["steps"])
    print(f"final genotype: {results['genotype']}")
    for name, accuracy in results["search_val_accuracy"].items():
        print(f"learner {name}: search-val accuracy {accuracy:.3f}")
    for name, accuracy in results.get("holdout_accuracy", {}).items():
        print(f"learner {name}: holdout accuracy {accuracy:.3f}")
    if schedule is None:
        print(
            f"outputs in {root_dir}: genotype.json / genotype.dot, genotypes/ (per epoch), "
            f"checkpoints/, results.json; TensorBoard: tensorboard --logdir {root_dir}/summaries"
            f" (run {run_loop.run_name(root_dir)})"
        )
    else:
        print(
            f"outputs in {root_dir}: genotype.json / genotype.dot (at most "
            f"{schedule.skip_limit} skip-connects), genotypes/skip_limit_*.json, results.json, "
            f"stages/stage_*/ (each stage's search); TensorBoard: tensorboard --logdir "
            f"{root_dir}/stages"
        )
    logging.info("results: %s", results)
    return results


def check_settings(settings):
    """``run_search``'s keywords (``root_dir`` aside) checked and converted; ValueError naming
    the first bad one (``run_search.<name>=<value> is invalid: expected ...``)."""
    from ilnas_tf import data, distribution, precision, run_dir
    from ilnas_tf.search_space import CELL_CLASSES, RECOMPUTE, check_partial_channels

    v, s = validation, dict(settings)

    def name(key):
        return f"run_search.{key}"

    def dataset(item_name, value):
        return v.check_choice(item_name, value, tuple(data.DATASETS))

    s["datasets"] = v.check_sequence(name("datasets"), s["datasets"], min_length=1, item=dataset)
    s["data_dir"] = run_dir.check_data_dir(name("data_dir"), s["data_dir"])
    v.check_choice(name("split"), s["split"], tuple(data.SEARCH_SPLITS))
    s["image_size"] = v.check_optional(v.check_int, name("image_size"), s["image_size"], 8)
    for key in ("channels", "layers", "nodes", "batch_size", "epochs"):
        s[key] = v.check_int(name(key), s[key], 1)
    v.check_choice(name("cell_impl"), s["cell_impl"], tuple(CELL_CLASSES))
    s["partial_channels"] = check_partial_channels(
        name("partial_channels"), s["partial_channels"], s["channels"]
    )
    v.check_bool(name("edge_normalization"), s["edge_normalization"])
    v.check_bool(name("gates"), s["gates"])
    v.check_bool(name("progressive"), s["progressive"])
    if s["gates"]:
        for key, plain in (
            ("edge_normalization", False),
            ("partial_channels", 1),
            ("progressive", False),
        ):
            if s[key] != plain:
                v.fail(name(key), s[key], f"{plain!r} with PR-DARTS' gates (run_search.gates=True)")
    v.check_choice(name("recompute"), s["recompute"], RECOMPUTE)
    precision.check_precision(name("mixed_precision"), s["mixed_precision"])
    s["loss_scale"] = precision.check_loss_scale(name("loss_scale"), s["loss_scale"])
    if s["loss_scale"] is not None and s["mixed_precision"] != "mixed_float16":
        v.fail(name("loss_scale"), s["loss_scale"], "None unless mixed_precision='mixed_float16'")
    s["warmup_epochs"] = v.check_int(name("warmup_epochs"), s["warmup_epochs"], 0, s["epochs"] - 1)
    s["steps_per_epoch"] = v.check_optional(
        v.check_int, name("steps_per_epoch"), s["steps_per_epoch"], 1
    )
    s["max_steps"] = v.check_optional(v.check_int, name("max_steps"), s["max_steps"], 0)
    s["learning_rate"] = v.check_number(
        name("learning_rate"), s["learning_rate"], 0, exclusive_minimum=True
    )
    s["learning_rate_min"] = v.check_number(
        name("learning_rate_min"), s["learning_rate_min"], 0, s["learning_rate"]
    )
    s["seed"] = v.check_int(name("seed"), s["seed"], 0)
    v.check_bool(name("deterministic"), s["deterministic"])
    v.check_choice(name("strategy"), s["strategy"], distribution.STRATEGIES)
    for key in ("summary_every_steps", "checkpoint_every_steps", "max_to_keep"):
        s[key] = v.check_int(name(key), s[key], 1)
    return s


def _progressive_schedule(settings):
    """The checked ``progressive.ProgressiveSchedule`` of a progressive search (else None)."""
    from ilnas_tf import genotype, progressive

    if not settings["progressive"]:
        return None
    schedule = progressive.ProgressiveSchedule().checked(
        len(genotype.PRIMITIVES), settings["nodes"]
    )
    if schedule.uses_skip_dropout:
        for key, plain in (("partial_channels", 1), ("recompute", "none")):
            if settings[key] != plain:
                validation.fail(
                    f"run_search.{key}",
                    settings[key],
                    f"{plain!r} with P-DARTS' skip-connect dropout (ProgressiveSchedule."
                    f"skip_dropout={schedule.skip_dropout}; set it to zeros to combine them)",
                )
    return schedule


def _describe(settings, config, schedule, stage, strategy, loss_scale, per_epoch):
    """The console line that describes a search (or a P-DARTS stage) before it starts."""
    s = settings
    datasets, epochs, warmup_epochs = s["datasets"], s["epochs"], s["warmup_epochs"]
    print(
        f"supernet C={stage.channels}, {stage.layers} cells, {s['nodes']} nodes"
        + (f", partial channels 1/{s['partial_channels']}" if s["partial_channels"] > 1 else "")
        + (", edge normalisation" if s["edge_normalization"] else "")
        + (", PR-DARTS gates" if s["gates"] else "")
        + ("" if schedule is None else f", P-DARTS stage {stage.index + 1}/{schedule.num_stages}")
        + f"; K={len(datasets)} learners "
        f"({', '.join(datasets)}), M={config.rounds} rounds, mode={config.mode}, "
        f"lambda={config.proximal_strength}; {per_epoch} steps/epoch x {epochs} epochs"
        + (f" ({warmup_epochs} weight-only warm-up)" if warmup_epochs else "")
        + f" on {strategy.num_replicas_in_sync} replica(s)"
        + (f", {s['mixed_precision']}" if s["mixed_precision"] else "")
        + (f" (loss scale {loss_scale:g})" if loss_scale else "")
        + (f" (stopping after {s['max_steps']} steps)" if s["max_steps"] else ""),
        flush=True,
    )


def _check_precision_mode(mixed_precision, config):
    """ValueError for float16 with a mode whose derivatives are not loss-scaled."""
    scaled = config.mode == "first_order" or (
        config.mode == "exact" and config.exact_method == "stagewise"
    )
    if mixed_precision == "mixed_float16" and not scaled:
        validation.fail(
            "run_search.mixed_precision",
            mixed_precision,
            f"None or 'mixed_bfloat16' with InterleavingConfig.mode={config.mode!r}, "
            f"exact_method={config.exact_method!r} (float16 loss scaling covers the stage-wise "
            "exact and the first-order modes)",
        )


def _refuse_num_learners_binding():
    """ValueError if gin binds ``InterleavingConfig.num_learners`` (K is len(datasets))."""
    try:
        value = gin.query_parameter("InterleavingConfig.num_learners")
    except ValueError:  # not bound
        return
    raise ValueError(
        f"InterleavingConfig.num_learners={value!r} is bound in gin: remove the binding; the "
        "search has one learner per dataset (K = len(run_search.datasets))"
    )


def _evaluations(data, datasets, specs, search_data, split, batch_size, data_dir, image_size):
    """The final evaluations: whole search-val slices, and the holdout of the ablation split."""
    from ilnas_tf.search_loop import Evaluation

    val_slice = data.SEARCH_SPLITS[split][1]

    def val_dataset(name, spec):
        return lambda: data.eval_dataset(
            name, EVAL_BATCH_SIZE, split=spec.train_split + val_slice, data_dir=data_dir,
            image_size=image_size,
        )  # fmt: skip

    examples = sum(s.num_val for s in search_data)
    evaluations = [
        Evaluation(
            key="search_val_accuracy",
            label="search-val",
            datasets=[val_dataset(name, spec) for name, spec in zip(datasets, specs)],
            batches=sum(-(-s.num_val // EVAL_BATCH_SIZE) for s in search_data),
            examples=examples,
        )
    ]
    if all(s.holdout is not None for s in search_data):
        evaluations.append(
            Evaluation(
                key="holdout_accuracy",
                label="holdout",
                datasets=[lambda s=s: s.holdout for s in search_data],
                batches=sum(-(-s.num_holdout // batch_size) for s in search_data),
                examples=sum(s.num_holdout for s in search_data),
            )
        )
    return evaluations


def main(argv):
    del argv
    cli.run(
        "search",
        run_search,
        [DEMO_GIN],
        configurables=("ilnas_tf.engine", "ilnas_tf.progressive", "ilnas_tf.pr_darts"),
    )


def console_main():
    """The ``ilnas-search`` console script (and ``python -m ilnas_tf.search``)."""
    cli.console_main(main, sys.modules[__name__])


if __name__ == "__main__":
    console_main()
