"""Activation recomputation (``SearchEncoder(recompute="cells")``) changes memory, not results.

Float64, tiny supernets (C=2, 3 cells: normal, reduction, reduction; 2 nodes; 8x8 images):
with and without recomputation the loss, its gradient w.r.t. (W, H, mixing), both mixed
second derivatives of ``stage_functions`` (forward-over-reverse and reverse-over-reverse,
eagerly and as the engine's non-inlined ``tf.function``s) and the engine's exact
hypergradient (stage-wise and nested tapes, K=2, M=2) agree to round-off (1e-12 relative),
also under MirroredStrategy on 2 logical CPUs (run in a subprocess: this file's ``__main__``).
A Python counter on the cells' ``forward`` shows that the backward pass does recompute.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

if __name__ == "__main__":  # the MirroredStrategy check: 2 logical CPUs before TF starts
    (_cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)]
    )

import keras  # noqa: E402
from layer_test_utils import run_layer_test  # noqa: E402

from ilnas_tf import engine, learner, run_dir, search, search_space, stage_functions  # noqa: E402
from ilnas_tf.fused_cell import FusedSearchCell  # noqa: E402
from ilnas_tf.recompute import recomputed  # noqa: E402
from ilnas_tf.search_cell import SearchCell  # noqa: E402

RTOL = 1e-12
SHAPE = (8, 8, 3)
HERE = os.path.dirname(os.path.abspath(__file__))


def _assert_equal(got, expected, rtol=RTOL):
    """Each pair equal to ``rtol`` times the expected tensor's largest magnitude."""
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        a, b = np.asarray(a), np.asarray(b)
        scale = np.max(np.abs(b)) if b.size else 0.0
        assert scale > 0, f"item {index} is zero: the comparison would be vacuous"
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=f"item {index}")


def _make_learner(recompute, cell_impl="fused", seed=0):
    keras.utils.set_random_seed(seed)
    encoder = search_space.SearchEncoder(
        2, 3, steps=2, multiplier=2, cell_impl=cell_impl, recompute=recompute, dtype="float64"
    )
    head = search_space.ClassifierHead(3, dtype="float64")
    return learner.Learner(encoder, head, SHAPE)


def _stage_inputs(item, seed=1, batch=2):
    """(encoder, head, normal, reduce, images, labels, d_enc, d_head) for the stage functions.

    The flat weights differ from the layers' variables (the learner's initial state), so a
    backward pass that read the variables instead of the substituted weights would show.
    """
    rng = np.random.default_rng(seed)
    state = item.states[0]
    shape = item.encoder.mixing_shape

    def moved(flat):
        return flat + 0.05 * tf.constant(rng.normal(size=flat.shape))

    return (
        moved(state.encoder_weights),
        moved(state.head_weights),
        tf.nn.softmax(tf.constant(rng.normal(size=shape))),
        tf.nn.softmax(tf.constant(rng.normal(size=shape))),
        tf.constant(rng.normal(size=(batch,) + SHAPE)),
        tf.constant(rng.integers(0, 3, size=batch).astype(np.int32)),
        tf.constant(rng.normal(size=state.encoder_weights.shape)),
        tf.constant(rng.normal(size=state.head_weights.shape)),
    )


# ------------------------------------------------------------------ the op itself


def _toy(x, w):
    return tf.sin(x * w) * x


def _derivatives(fn, x, w, dx, dw):
    """JVP, gradient, forward-over-reverse and reverse-over-reverse HVPs of sum(fn^2)."""
    with tf.autodiff.ForwardAccumulator([x, w], [dx, dw]) as acc:
        jvp = acc.jvp(fn(x, w))
    with tf.autodiff.ForwardAccumulator([x, w], [dx, dw]) as acc:
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(tf.square(fn(x, w)))
        grads = tape.gradient(loss, [x, w])
    forward_over_reverse = [acc.jvp(g) for g in grads]
    with tf.GradientTape() as outer:
        outer.watch([x, w])
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(tf.square(fn(x, w)))
        g = tape.gradient(loss, [x, w])
        dot = tf.reduce_sum(g[0] * dx) + tf.reduce_sum(g[1] * dw)
    reverse_over_reverse = outer.gradient(dot, [x, w])
    return [jvp, *grads, *forward_over_reverse, *reverse_over_reverse]


@pytest.mark.parametrize("compiled", [False, True])
def test_recomputed_op_has_the_plain_functions_derivatives(compiled):
    rng = np.random.default_rng(0)
    x, w, dx, dw = (tf.constant(rng.normal(size=5)) for _ in range(4))

    def run(fn):
        compute = lambda: _derivatives(fn, x, w, dx, dw)  # noqa: E731
        return (tf.function(compute, autograph=False) if compiled else compute)()

    _assert_equal(run(lambda a, b: recomputed(_toy, [a, b])), run(_toy))


def test_recomputed_function_must_not_read_variables():
    weight = tf.Variable(2.0, dtype=tf.float64)
    with pytest.raises(ValueError, match="reads variables"):
        recomputed(lambda x: x * weight, [tf.constant(1.0, tf.float64)])


# ------------------------------------------------------------------ the option


@pytest.mark.parametrize("value", ["all", "Cells", True, 1, ["cells"]])
def test_bad_recompute_value_names_it(value):
    with pytest.raises(
        ValueError, match=r"recompute=.* is invalid: expected one of \('none', 'cells'\)"
    ):
        search_space.SearchEncoder(2, 3, recompute=value)


def test_recompute_is_in_the_config_and_a_search_setting():
    encoder = search_space.SearchEncoder(2, 3, recompute="cells")
    assert encoder.get_config()["recompute"] == "cells"
    assert search_space.SearchEncoder.from_config(encoder.get_config()).recompute == "cells"
    assert search_space.SearchEncoder(2, 3).recompute == "none"
    settings = dict(inspect.signature(search.run_search).parameters)
    assert settings["recompute"].default == "none"
    arguments = {k: p.default for k, p in settings.items() if k not in ("root_dir",)}
    arguments = {k: v for k, v in arguments.items() if k not in ("fresh_start", "force_resume")}
    assert search.check_settings({**arguments, "recompute": "cells"})["recompute"] == "cells"
    with pytest.raises(ValueError, match=r"run_search.recompute='all' is invalid"):
        search.check_settings({**arguments, "recompute": "all"})
    # A memory option: changing it does not change a run's fingerprint.
    assert "recompute" in run_dir.RESUMABLE


def test_recomputing_encoder_is_a_keras_layer():
    """Builds, config and serialisation round trips, the same output as without."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(2,) + SHAPE).astype(np.float32))
    mixing = [tf.nn.softmax(tf.constant(rng.normal(size=(5, 8)).astype(np.float32)))] * 2
    encoder = run_layer_test(
        search_space.SearchEncoder,
        dict(channels=2, layers=3, steps=2, multiplier=2, recompute="cells"),
        (images, *mixing),
        (2, 16),
    )
    keras.utils.set_random_seed(0)
    plain = search_space.SearchEncoder(2, 3, steps=2, multiplier=2)
    plain(images, *mixing)
    plain.set_weights(encoder.get_weights())
    np.testing.assert_array_equal(encoder(images, *mixing), plain(images, *mixing))


@pytest.mark.parametrize("cell_impl", ["fused", "per_edge"])
def test_backward_pass_recomputes_every_cell(monkeypatch, cell_impl):
    """Counts the cells' forward passes: a loss and its gradient run each cell once without
    recomputation and twice with it (eagerly and while tracing); the gradients agree."""
    cell_class = {"fused": FusedSearchCell, "per_edge": SearchCell}[cell_impl]
    calls = []
    original = cell_class.forward

    def counting(self, *args):
        calls.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(cell_class, "forward", counting)
    grads = {}
    for recompute in ("none", "cells"):
        item = _make_learner(recompute, cell_impl)
        args = _stage_inputs(item)[:6]
        for compiled in (False, True):
            compute = functools.partial(stage_functions.loss_gradient, item)
            if compiled:
                compute = tf.function(compute, autograph=False)
            del calls[:]
            grads[recompute, compiled] = compute(*args)[:2]
            per_cell = 2 if recompute == "cells" else 1
            assert sorted(calls) == sorted(per_cell * [c.name for c in item.encoder.cells])
    for compiled in (False, True):
        _assert_equal(grads["cells", compiled], grads["none", compiled])


@pytest.mark.parametrize("hvp_method", stage_functions.HVP_METHODS)
def test_second_order_recomputes_the_vjp_too(monkeypatch, hvp_method):
    """A mixed second derivative runs each cell 4 times: the forward pass and its JVP (or, by
    reverse-over-reverse, the first-order backward of the loss path), and the VJP as a
    recomputed op, forward and differentiated. The second-order pass thus stores no cell's
    internal activations (a plain cell runs once and is stored)."""
    calls = []
    original = FusedSearchCell.forward

    def counting(self, *args):
        calls.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(FusedSearchCell, "forward", counting)
    item = _make_learner("cells")
    args = _stage_inputs(item)
    del calls[:]  # building the learner ran the cells once
    stage_functions.mixed_second_derivative(item, hvp_method, True, *args)
    assert sorted(calls) == sorted(4 * [c.name for c in item.encoder.cells])


# ------------------------------------------------------------------ stage functions


def _stage_results(item, compiled):
    """validation_gradient (eagerly only) and both mixed second derivatives (with the
    weights' parts)."""
    args = _stage_inputs(item)
    functions = {
        method: stage_functions.StageFunctions([item], method, shared=compiled)
        for method in stage_functions.HVP_METHODS
    }
    results = [] if compiled else list(functions["forward_over_reverse"].validation(0)(*args[:6]))
    for method in stage_functions.HVP_METHODS:
        results += list(functions[method].mixed(0, True)(*args))
    return results


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "noinline_function"])
def test_stage_derivatives_equal_with_and_without_recomputation(compiled):
    plain, recomputing = _make_learner("none"), _make_learner("cells")
    np.testing.assert_array_equal(
        recomputing.states[0].encoder_weights.numpy(), plain.states[0].encoder_weights.numpy()
    )
    # loss, logits, ∇_{W,H,normal,reduce} L; then per HVP method ∂_{normal,reduce,W,H}.
    _assert_equal(_stage_results(recomputing, compiled), _stage_results(plain, compiled))


# ------------------------------------------------------------------ the engine


def _engine(config, recompute, shared):
    keras.utils.set_random_seed(0)
    arch = search_space.Architecture(steps=2, init_scale=0.5, dtype="float64")
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                2, 3, steps=2, multiplier=2, recompute=recompute, dtype="float64"
            ),
            search_space.ClassifierHead(classes, dtype="float64"),
            SHAPE,
            name=f"learner{k}",
            num_states=config.rounds,
        )
        for k, classes in enumerate((3, 2)[: config.num_learners])
    ]
    return engine.InterleavingEngine(arch, learners, config, shared_stage_functions=shared)


def _engine_batches(eng, seed=1, batch=2):
    rng = np.random.default_rng(seed)

    def one(k):
        classes = eng.learners[k].head.num_classes
        images = tf.constant(rng.normal(size=(batch,) + SHAPE))
        return images, tf.constant(rng.integers(0, classes, size=batch).astype(np.int32))

    return [one(k) for _, k in eng.config.stages], [one(k) for k in range(len(eng.learners))]


@pytest.mark.parametrize("exact_method", ["stagewise", "nested_tapes"])
def test_engine_hypergradient_equal_with_and_without_recomputation(exact_method):
    """The exact arch gradient, K=2, M=2, eagerly (tracing the engine's stage functions costs
    minutes on a tiny supernet; the traced stage functions are compared above)."""
    config = engine.InterleavingConfig(
        num_learners=2, rounds=2, proximal_strength=0.7, mode="exact", exact_method=exact_method
    )
    grads = {}
    for recompute in ("none", "cells"):
        eng = _engine(config, recompute, shared=False)
        train, val = _engine_batches(eng)
        grads[recompute] = [g.numpy() for g in eng.arch_gradient(train, val, 0.01)[0]]
    _assert_equal(grads["cells"], grads["none"])


def test_mirrored_strategy_hypergradient_equal_with_and_without_recomputation(tmp_path):
    """Synchronised batch norm inside the recomputed cells, in a ``tf.function``: stage-wise
    (reverse-over-reverse on several replicas) and nested tapes, K=1, M=1 (DARTS second order;
    the chain is single-device math, tested above), each replica's share."""
    out = tmp_path / "mirrored.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(np.load(out))
    names = sorted(k[len("none_") :] for k in values if k.startswith("none_"))
    assert len(names) == 2 * 2 * 2  # methods x replicas x alphas
    _assert_equal([values[f"cells_{n}"] for n in names], [values[f"none_{n}"] for n in names])


def _mirrored_main(out):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    values = {}
    for method in ("stagewise", "nested_tapes"):
        config = engine.InterleavingConfig(mode="exact", exact_method=method)
        for recompute in ("none", "cells"):
            with strategy.scope():
                eng = _engine(config, recompute, shared=False)
            train, val = _engine_batches(eng, batch=4)

            def split(ctx, tensors=(train, val)):
                start = 2 * ctx.replica_id_in_sync_group
                return tf.nest.map_structure(lambda t, s=start: t[s : s + 2], tensors)

            per_replica = strategy.experimental_distribute_values_from_function(split)
            lr = tf.constant(0.01, tf.float64)

            @tf.function(autograph=False)
            def step(train, val, lr, eng=eng):
                return strategy.run(lambda t, v: eng.arch_gradient(t, v, lr)[0], args=(train, val))

            grads = step(*per_replica, lr)
            for i, grad in enumerate(grads):
                for r, share in enumerate(strategy.experimental_local_results(grad)):
                    values[f"{recompute}_{method}_alpha{i}_replica{r}"] = share.numpy()
    np.savez(out, **values)


if __name__ == "__main__":
    _mirrored_main(sys.argv[1])
