"""Training of a derived network: ``python -m ilnas_tf.train --gin_file=gin/train_cifar10.gin``.

Flags: those of the search command (``--gin_file``, default ``gin/train_demo.gin``;
``--gin_bindings``; ``--root_dir``, default ``./runs/train``; ``--strategy``) and ``--genotype``
(overrides ``run_train.genotype``): a published name (``DARTS_V2``, ``PC_DARTS``, ...), a
genotype JSON file, a search ``root_dir`` (its ``genotype.json``) or genotype text. Rerunning
the same command resumes from the latest checkpoint. At the end the network is evaluated on
the test set and exported (``export``): ``<root_dir>/export/saved_model`` and
``<root_dir>/export/model.keras``.

Every hyperparameter is a keyword of the gin-configurable ``run_train``; its defaults are the
DARTS CIFAR-10 evaluation protocol (quark0/darts ``cnn/train.py``). ``run_loop.RunLoop`` owns
strategy, summaries and checkpoints and drives a ``train_loop.TrainTask``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging

import gin
from ilnas_tf import cli, validation

flags.DEFINE_string(
    "genotype", None, "Genotype: a name, a JSON file, a search root_dir or genotype text."
)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags
FLAGS = flags.FLAGS
DEMO_GIN = os.path.join(cli.REPO_ROOT, "gin", "train_demo.gin")
NETWORKS = ("cifar", "imagenet")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
EVAL_BATCH_SIZE = 500
ERROR = "ilnas_tf.export:ExportError"  # besides cli.ERRORS: a run that cannot be exported


@gin.configurable(denylist=["fresh_start", "force_resume"])
def run_train(
    root_dir,
    genotype="DARTS_V2",
    dataset="cifar10",
    data_dir=None,
    network="cifar",
    image_size=None,
    channels=36,
    layers=20,
    auxiliary=True,
    auxiliary_weight=0.4,
    drop_path_rate=0.2,
    cutout_length=16,
    batch_size=96,
    epochs=600,
    steps_per_epoch=None,
    max_steps=None,
    learning_rate=0.025,
    lr_schedule="cosine",
    learning_rate_min=0.0,
    lr_decay=0.97,
    momentum=0.9,
    weight_decay=3e-4,
    grad_clip=5.0,
    label_smoothing=0.0,
    eval_every_epochs=1,
    mixed_precision=None,
    seed=0,
    deterministic=False,
    strategy="default",
    summary_every_steps=50,
    checkpoint_every_steps=1000,
    max_to_keep=3,
    export=True,
    fresh_start=False,
    force_resume=False,
):
    """Trains (or resumes) a network built from a genotype, evaluates and exports it.

    Every keyword is checked first (``check_settings``); then ``root_dir``'s run record
    (``run_dir.check_run``): the same settings resume (a complete run says so and changes
    nothing), other defining settings are refused before anything is written.

    Args:
      root_dir: output directory (layout in ``train_loop``).
      genotype: anything ``genotype.load_genotype`` resolves (name, JSON file, search root_dir,
        genotype text).
      dataset: ``data.DATASETS`` name; trained on its whole training split, tested on its test
        split (``validation`` for ImageNet).
      data_dir: TFDS data dir (default: TFDS' default).
      network: ``"cifar"`` (``NetworkCIFAR``) or ``"imagenet"`` (``NetworkImageNet``).
      image_size: square input size (default: the dataset's own).
      channels, layers: initial channels C and number of cells.
      auxiliary, auxiliary_weight: the auxiliary head and the weight of its loss.
      drop_path_rate: drop-path rate reached at the end, ramped linearly over the epochs.
      cutout_length: Cutout square side on the normalised images (0: none).
      batch_size: global batch size.
      epochs: training epochs.
      steps_per_epoch: iterations per epoch (default ``ceil(train examples / batch_size)``).
      max_steps: stop after this many iterations (default: all ``epochs``).
      learning_rate, lr_schedule, learning_rate_min, lr_decay: ``"cosine"`` from
        ``learning_rate`` to ``learning_rate_min`` over ``epochs``, or ``"exponential"``
        (``learning_rate * lr_decay ** epoch``); constant within an epoch.
      momentum, weight_decay, grad_clip: PyTorch SGD (``optimizers.TorchSGD``: coupled weight
        decay) after clipping the loss gradient's global norm to ``grad_clip`` (0: no clipping).
      label_smoothing: label smoothing of the cross-entropy (DARTS ImageNet: 0.1).
      eval_every_epochs: test-set evaluation every that many epochs (and at the end).
      mixed_precision: None (float32), ``"mixed_float16"`` (GPUs; dynamic loss scaling) or
        ``"mixed_bfloat16"``. Exports are float32 either way.
      seed: seed of the initial weights, the data stream and the drop-path noise.
      deterministic: enable TensorFlow op determinism (bitwise reproducible resume).
      strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (TF_CONFIG).
      summary_every_steps, checkpoint_every_steps, max_to_keep: outputs (see
        ``run_loop.RunLoop``).
      export: export the SavedModel and the ``.keras`` file at the end.
      fresh_start, force_resume: the ``--fresh_start`` / ``--force_resume`` flags (not
        bindable in gin; see ``run_dir``).

    Returns:
      The results dict written to ``root_dir/results.json``.
    """
    arguments = {
        k: v for k, v in locals().items() if k not in ("root_dir", "fresh_start", "force_resume")
    }
    import keras
    import tensorflow as tf

    from ilnas_tf import data, distribution, optimizers, run_dir, run_loop, train_loop
    from ilnas_tf import export as export_lib
    from ilnas_tf import genotype as genotype_lib
    from ilnas_tf import network as network_lib

    resolved = genotype_lib.load_genotype(genotype)  # bad genotypes fail before anything runs
    settings = check_settings(arguments)
    dataset, data_dir, image_size = (settings[k] for k in ("dataset", "data_dir", "image_size"))
    epochs, steps_per_epoch, max_steps = (
        settings[k] for k in ("epochs", "steps_per_epoch", "max_steps")
    )
    settings["genotype"] = resolved.to_string()  # a search root_dir's genotype may change
    identity = run_dir.fingerprint("run_train", settings)
    state, record = run_dir.check_run(
        root_dir, "train", identity, fresh_start=fresh_start, force_resume=force_resume
    )
    run_dir.check_tf_config(strategy)
    strategy_object = distribution.make_strategy(strategy)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    spec = data.get_spec(dataset)
    image_shape = (image_size, image_size, 3) if image_size else spec.image_shape

    def train_stream(start_batch=0):
        return data.train_dataset(
            dataset, batch_size, data_dir=data_dir, seed=seed, cutout_length=cutout_length,
            image_size=image_size, start_batch=start_batch,
        )  # fmt: skip

    def eval_dataset():
        return data.eval_dataset(dataset, EVAL_BATCH_SIZE, data_dir=data_dir, image_size=image_size)

    train_data = train_stream()  # validates the dataset before anything is built

    def make_dataset(start_batch=0):
        # A fresh run reads the stream built above (an in-memory split is loaded once).
        return train_data.dataset if start_batch == 0 else train_stream(start_batch).dataset

    per_epoch = steps_per_epoch or train_data.steps_per_epoch
    total_steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    if state == "complete" and record["completed_steps"] >= total_steps:
        return run_dir.already_complete("train", root_dir, record)
    run_dir.check_root_dir(root_dir)
    print(f"root_dir: {root_dir}", flush=True)
    if distribution.is_chief(strategy_object):
        step = run_dir.latest_step(root_dir)
        run_dir.start_run(root_dir, "train", identity, state, record, step=step)
    network_class = network_lib.NetworkCIFAR if network == "cifar" else network_lib.NetworkImageNet
    use_auxiliary = bool(auxiliary) and auxiliary_weight > 0
    with strategy_object.scope():
        model = network_class(
            channels=channels,
            num_classes=spec.num_classes,
            layers=layers,
            auxiliary=use_auxiliary,
            genotype=resolved,
            auxiliary_weight=auxiliary_weight,
            seed=seed,
            dtype=mixed_precision or "float32",
            name="network",
        )
        model.build((None, *image_shape))
        optimizer = optimizers.TorchSGD(
            learning_rate=train_loop.learning_rate_at(0, epochs, learning_rate, lr_schedule),
            momentum=momentum,
            coupled_weight_decay=weight_decay,
            global_clipnorm=grad_clip or None,
        )
        if mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    parameters = network_lib.count_parameters(model)
    print(
        f"{network_class.__name__} C={channels}, {layers} cells, genotype {resolved.to_string()}"
        f"\n{parameters / 1e6:.3f} M parameters (auxiliary head excluded); {dataset}: "
        f"{train_data.num_examples} training examples, {per_epoch} steps/epoch x {epochs} "
        f"epochs, batch {batch_size} on {strategy_object.num_replicas_in_sync} replica(s)"
        + (f" (stopping after {max_steps} steps)" if max_steps else ""),
        flush=True,
    )
    task = train_loop.TrainTask(
        strategy=strategy_object,
        model=model,
        optimizer=optimizer,
        make_dataset=make_dataset,
        eval_dataset=eval_dataset,
        global_batch_size=batch_size,
        epochs=epochs,
        learning_rate=lambda epoch: train_loop.learning_rate_at(
            epoch, epochs, learning_rate, lr_schedule, learning_rate_min, lr_decay
        ),
        drop_path_rate=drop_path_rate,
        auxiliary_weight=auxiliary_weight if use_auxiliary else 0.0,
        label_smoothing=label_smoothing,
        eval_every_epochs=eval_every_epochs,
        extra_results={
            "genotype": resolved.to_string(),
            "dataset": dataset,
            "parameters": parameters,
        },
    )
    loop = run_loop.RunLoop(
        task,
        root_dir=root_dir,
        strategy=strategy_object,
        phases=[run_loop.Phase("train", epochs)],
        steps_per_epoch=per_epoch,
        summary_every_steps=summary_every_steps,
        checkpoint_every_steps=checkpoint_every_steps,
        max_to_keep=max_to_keep,
        max_steps=max_steps,
    )
    config_path = os.path.join(root_dir, "operative_config.gin")
    if loop.chief:
        export_lib.write_model_description(root_dir, model, dataset, image_shape)
        run_dir.write_atomically(config_path, gin.config_str())
    results = loop.run()
    if loop.chief:
        run_dir.write_atomically(config_path, gin.operative_config_str())
        if export:
            paths = export_lib.export_run(root_dir)
            results["export"] = {key: paths[key] for key in ("saved_model", "keras")}
            run_dir.write_atomically(
                os.path.join(root_dir, "results.json"), json.dumps(results, indent=2)
            )
        run_dir.finish_run(root_dir, results["steps"])
    print(
        f"test accuracy {results['test_accuracy']:.4f} (best {results['best_test_accuracy']:.4f}"
        f", top-5 {results['test_top5_accuracy']:.4f}) after {results['steps']} steps"
    )
    if "export" in results:
        print(f"exported: {results['export']['saved_model']} and {results['export']['keras']}")
    print(
        f"TensorBoard: tensorboard --logdir {root_dir}/summaries (run {run_loop.run_name(root_dir)})"
    )
    logging.info("results: %s", results)
    return results


def check_settings(settings):
    """``run_train``'s keywords (``root_dir`` and ``genotype`` aside) checked and converted;
    ValueError naming the first bad one (``run_train.<name>=<value> is invalid: ...``)."""
    from ilnas_tf import data, distribution, run_dir, train_loop

    v, s = validation, dict(settings)

    def name(key):
        return f"run_train.{key}"

    s["dataset"] = v.check_choice(name("dataset"), s["dataset"], tuple(data.DATASETS))
    s["data_dir"] = run_dir.check_data_dir(name("data_dir"), s["data_dir"])
    v.check_choice(name("network"), s["network"], NETWORKS)
    s["image_size"] = v.check_optional(v.check_int, name("image_size"), s["image_size"], 8)
    for key in ("channels", "layers", "batch_size", "epochs", "eval_every_epochs"):
        s[key] = v.check_int(name(key), s[key], 1)
    for key in ("summary_every_steps", "checkpoint_every_steps", "max_to_keep", "seed"):
        s[key] = v.check_int(name(key), s[key], 1 if key != "seed" else 0)
    for key in ("auxiliary", "deterministic", "export"):
        v.check_bool(name(key), s[key])
    s["cutout_length"] = v.check_int(name("cutout_length"), s["cutout_length"], 0)
    optional = {"steps_per_epoch": 1, "max_steps": 0}
    for key, minimum in optional.items():
        s[key] = v.check_optional(v.check_int, name(key), s[key], minimum)
    s["learning_rate"] = v.check_number(
        name("learning_rate"), s["learning_rate"], 0, exclusive_minimum=True
    )
    v.check_choice(name("lr_schedule"), s["lr_schedule"], train_loop.SCHEDULES)
    ranges = {
        "auxiliary_weight": (0, None),
        "drop_path_rate": (0, 0.99),
        "learning_rate_min": (0, s["learning_rate"]),
        "lr_decay": (0, 1),
        "momentum": (0, 1),
        "weight_decay": (0, None),
        "grad_clip": (0, None),
        "label_smoothing": (0, 0.99),
    }
    for key, (low, high) in ranges.items():
        s[key] = v.check_number(name(key), s[key], low, high)
    v.check_choice(name("mixed_precision"), s["mixed_precision"], PRECISIONS)
    v.check_choice(name("strategy"), s["strategy"], distribution.STRATEGIES)
    return s


def main(argv):
    del argv
    overrides = {"genotype": FLAGS.genotype} if FLAGS["genotype"].present else None
    cli.run("train", run_train, [DEMO_GIN], (*cli.ERRORS, ERROR), overrides=overrides)


def console_main():
    """The ``ilnas-train`` console script (and ``python -m ilnas_tf.train``)."""
    cli.console_main(main, sys.modules[__name__])


if __name__ == "__main__":
    console_main()
