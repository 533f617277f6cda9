"""Tiny float64 interleaving setups shared by the engine tests."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ilnas_tf import engine, hypergradient, learner, search_space

IMAGE_SHAPE = (8, 8, 3)


def make_engine(
    config,
    classes=(3, 2),
    channels=2,
    layers=3,
    seed=0,
    dtype="float64",
    shared_stage_functions=False,
    nodes=4,
    architecture_class=search_space.Architecture,
    skip_dropout_rate=None,
    **encoder_kwargs,
):
    """Architecture + K learners (tiny supernets) + engine, deterministic in ``seed``.

    The tests call the engine eagerly; ``shared_stage_functions`` (off by default here) would
    trace each stage computation as a ``tf.function`` first, which costs more than it saves on
    tiny supernets run for one step. ``nodes``: intermediate nodes per cell (2 cuts the op
    count, hence the eager run time, about threefold). ``architecture_class`` (e.g.
    ``pc_darts.EdgeNormalizedArchitecture``) and ``encoder_kwargs`` (e.g. ``partial_channels``,
    ``cell_impl``) select other search spaces. ``skip_dropout_rate``: a ``tf.Variable`` for
    P-DARTS' skip-connect dropout (encoders built with ``skip_dropout=True``).
    """
    keras.utils.set_random_seed(seed)
    arch = architecture_class(steps=nodes, init_scale=0.5, dtype=dtype)
    num_states = config.rounds if config.weights_per_stage else 1
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                channels, layers, steps=nodes, multiplier=nodes, dtype=dtype, **encoder_kwargs
            ),
            search_space.ClassifierHead(classes[k], dtype=dtype),
            IMAGE_SHAPE,
            name=f"learner{k}",
            num_states=num_states,
            skip_dropout_rate=skip_dropout_rate,
        )
        for k in range(config.num_learners)
    ]
    return engine.InterleavingEngine(
        arch, learners, config, shared_stage_functions=shared_stage_functions
    )


def make_batches(eng, batch=2, seed=1, dtype=np.float64, noise=False):
    """One random train batch per stage and one validation batch per learner.

    ``noise``: each batch also carries noise ids (``data.with_noise_ids``'s rows; a distinct
    stream per batch) for skip-connect dropout.
    """
    rng = np.random.default_rng(seed)
    streams = iter(range(1000))

    def batch_for(k):
        classes = eng.learners[k].head.num_classes
        images = rng.normal(size=(batch,) + IMAGE_SHAPE).astype(dtype)
        labels = rng.integers(0, classes, size=(batch,)).astype(np.int32)
        if not noise:
            return tf.constant(images), tf.constant(labels)
        stream = next(streams)
        ids = np.stack([np.full(batch, stream), np.full(batch, 7), np.arange(batch)], axis=1)
        return tf.constant(images), tf.constant(labels), tf.constant(ids, tf.int64)

    train = [batch_for(k) for _, k in eng.config.stages]
    val = [batch_for(k) for k in range(eng.config.num_learners)]
    return train, val


def unrolled_objective(eng, alphas, train, val, lr):
    """The full unrolled objective J(A) = sum_k w_k L_k^val(A, W̄_k(A), H̄_k(A))."""
    problem = eng.problem(train, val, lr)
    chain = hypergradient.unrolled_chain(problem, alphas)
    finals = [chain[eng.config.last_stage(k)] for k in range(eng.config.num_learners)]
    total, _, _ = hypergradient.validation_objective(problem, alphas, finals)
    return total


def randomise_momentum(eng, seed=3):
    """Non-zero momentum buffers (0.1 * N(0, 1)) in every weight copy, so steps use them."""
    rng = np.random.default_rng(seed)
    for item in eng.learners:
        for state in item.states:
            state.encoder_momentum.assign(0.1 * rng.normal(size=state.encoder_momentum.shape))
            state.head_momentum.assign(0.1 * rng.normal(size=state.head_momentum.shape))
