"""Mixed precision in the search (``precision``): float32 state, bounded error, loss scaling.

The bound of the float32-vs-mixed comparison. A mixed computation rounds its inputs (weights,
alphas, images) to the compute dtype and then every layer's output. Rounding the *inputs
alone*, in an otherwise float32 computation, moves the hypergradient by s (measured here for
each problem and dtype: ``sensitivity``); no mixed implementation can be closer than that, and
each of the ~20 rounded stages of the forward and backward pass perturbs the rest of the
network about as much, so independent errors add up to about sqrt(20) s ~ 4.5 s. The tests
allow ``FACTOR`` = 8 times s (s is one draw and itself noisy; measured ratios: 1.0 to 1.7 on
these problems, 0.7 to 5 on other tiny supernets). On tiny supernets (8x8 images, batches of 4
or 16, 2 channels) s is large, 0.1 to 1 for bfloat16 and 0.002 to 0.4 for float16: the
hypergradient is piecewise smooth (ReLU switches, batch statistics of 16 to 256 values per
channel), and at the size of a half-precision rounding (2^-9 relative) enough ReLUs switch to
move it far more than its smooth part does (in float64, a weight perturbation 100 times smaller
moves the exact K=1 hypergradient by 1.5e-4, i.e. 1.5e-2 at full size if it were smooth,
against the 0.27 measured at full size). So an absolute bound like 5e-2 does not hold here;
larger nets were not measured. What is tight: every stored tensor is float32 and finite, the
mixed result is not a silent float32 one (its error exceeds float32 round-off by orders of
magnitude), and float16 loss scaling by powers of two changes the results by round-off only
(1e-6 relative per stage computation, 1e-4 along the chain, against ~1e-1 precision error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from search_fixtures import ENV, ROOT, run_in_process

from ilnas_tf import engine, genotype, learner, precision, run_loop, search_space

PRIMITIVES = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")  # cheap and varied
IMAGE_SHAPE = (8, 8, 3)
COMPUTE = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
UNIT_ROUNDOFF = {"mixed_bfloat16": 2.0**-8, "mixed_float16": 2.0**-11}
LOSS_SCALE = {"mixed_bfloat16": None, "mixed_float16": precision.DEFAULT_LOSS_SCALE}
FACTOR = 8.0
LEARNING_RATE = 0.05


def make_engine(config, policy=None, loss_scale=None, primitives=PRIMITIVES):
    """A tiny float32-state engine (eager stage functions) whose layers use ``policy``."""
    keras.utils.set_random_seed(0)
    architecture = search_space.Architecture(steps=2, init_scale=0.5, primitives=primitives)
    learners = [
        learner.Learner(
            search_space.SearchEncoder(
                2, 3, primitives=primitives, steps=2, multiplier=2, dtype=policy
            ),
            search_space.ClassifierHead((3, 2)[k], dtype=policy),
            IMAGE_SHAPE,
            name=f"learner{k}",
            num_states=config.rounds,
            loss_scale=loss_scale,
        )
        for k in range(config.num_learners)
    ]
    return engine.InterleavingEngine(architecture, learners, config, shared_stage_functions=False)


def make_batches(eng, batch=4, seed=1):
    rng = np.random.default_rng(seed)

    def one(k):
        images = rng.normal(size=(batch,) + IMAGE_SHAPE).astype(np.float32)
        labels = rng.integers(0, eng.learners[k].head.num_classes, size=batch)
        return tf.constant(images), tf.constant(labels.astype(np.int32))

    return [one(k) for _, k in eng.config.stages], [one(k) for k in range(eng.config.num_learners)]


def flat(tensors):
    return np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in tensors])


def relative(value, reference):
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def _rounded(tensor, dtype):
    return tf.cast(tf.cast(tensor, dtype), tensor.dtype)


def sensitivity(config, train, val, dtype, reference):
    """||g - g32|| / ||g32|| for g: float32 at weights, alphas and images rounded to ``dtype``."""
    eng = make_engine(config)
    for variable in eng.architecture.parameters + [
        v for item in eng.learners for s in item.states for v in (s.encoder_weights, s.head_weights)
    ]:
        variable.assign(_rounded(variable, dtype))
    rounded = [[(_rounded(x, dtype), y) for x, y in batches] for batches in (train, val)]
    return relative(flat(eng.arch_gradient(*rounded, LEARNING_RATE)[0]), reference)


def state_variables(eng):
    named = {f"alpha{i}": p for i, p in enumerate(eng.architecture.parameters)}
    named.update(
        {  # its step counter is int64 and its learning rate float64 in every run (``optimizers``)
            f"arch_optimizer/{v.path}": v
            for v in eng.arch_optimizer.variables
            if v.dtype not in ("int64", "float64")
        }
    )
    for item in eng.learners:
        for i, s in enumerate(item.states):
            for field in ("encoder_weights", "head_weights", "encoder_momentum", "head_momentum"):
                named[f"{item.name}/state{i}/{field}"] = getattr(s, field)
    return named


@pytest.mark.parametrize(
    "mode, learners, rounds", [("exact", 2, 2), ("exact", 1, 1), ("first_order", 2, 2)]
)
def test_mixed_hypergradient_is_within_the_rounding_sensitivity_and_state_stays_float32(
    mode, learners, rounds
):
    config = engine.InterleavingConfig(
        num_learners=learners, rounds=rounds, proximal_strength=0.5, mode=mode
    )
    reference_engine = make_engine(config)
    train, val = make_batches(reference_engine)
    reference = flat(reference_engine.arch_gradient(train, val, LEARNING_RATE)[0])
    for policy, dtype in COMPUTE.items():
        s = sensitivity(config, train, val, dtype, reference)
        eng = make_engine(config, policy, LOSS_SCALE[policy])
        assert all(item.encoder.compute_dtype == dtype.name for item in eng.learners)
        result = eng.arch_gradient_result(train, val, LEARNING_RATE)
        tensors = list(result.gradients) + list(result.val_losses)
        tensors += [p for parts in result.stage_parts or () if parts is not None for p in parts]
        assert all(t.dtype == tf.float32 for t in tensors)
        error = relative(flat(result.gradients), reference)
        print(f"{mode} K={learners} M={rounds} {policy}: error {error:.2e}, sensitivity {s:.2e}")
        assert 1e-4 < error <= FACTOR * max(s, UNIT_ROUNDOFF[policy]), (policy, error, s)
        before = {k: v.numpy() for k, v in state_variables(eng).items()}
        eng.apply_arch_gradient(result.gradients)
        eng.weight_step(train, LEARNING_RATE)
        for name, variable in state_variables(eng).items():
            assert variable.dtype == tf.float32, name
            assert np.all(np.isfinite(variable.numpy())), name
        for name in ("alpha0", "learner0/state0/encoder_weights", "learner0/state0/head_momentum"):
            assert np.any(before[name] != state_variables(eng)[name].numpy()), name


def test_every_candidate_op_runs_in_both_compute_dtypes_with_float32_gradients():
    config = engine.InterleavingConfig(num_learners=1, mode="first_order")
    train, val = make_batches(make_engine(config, primitives=genotype.PRIMITIVES))
    for policy in COMPUTE:
        eng = make_engine(config, policy, LOSS_SCALE[policy], genotype.PRIMITIVES)
        item, state = eng.learners[0], eng.learners[0].states[0]
        mixing = eng.architecture.mixing(eng.architecture.parameters)
        logits = item.logits(state.encoder_weights, state.head_weights, mixing, train[0][0])
        assert logits.dtype == tf.float32
        g_encoder, g_head, loss, _ = eng.functions.gradient(0)(
            state.encoder_weights, state.head_weights, *mixing, *train[0]
        )
        assert g_encoder.dtype == g_head.dtype == loss.dtype == tf.float32
        g_encoder = g_encoder.numpy()
        assert np.all(np.isfinite(g_encoder)) and np.count_nonzero(g_encoder) > 0.5 * g_encoder.size


def _stage_outputs(eng, direction_factor=1.0):
    """One stage's three computations at the start: gradient, validation, mixed parts."""
    functions, state = eng.functions, eng.learners[0].states[0]
    train, val = make_batches(eng)
    mixing = eng.architecture.mixing(eng.architecture.parameters)
    weights = (
        tf.convert_to_tensor(state.encoder_weights),
        tf.convert_to_tensor(state.head_weights),
    )
    gradient = functions.gradient(0)(*weights, *mixing, *train[0])[:2]
    validation = functions.validation(0)(*weights, *mixing, *val[0])[2:]
    direction = [LEARNING_RATE * direction_factor * d for d in validation[:2]]
    mixed = functions.mixed(0, True)(*weights, *mixing, *train[0], *direction)
    return gradient, validation, [p / direction_factor for p in mixed]


@pytest.mark.parametrize("hvp_method", ["forward_over_reverse", "reverse_over_reverse"])
def test_float16_results_do_not_depend_on_the_loss_scale_where_nothing_underflows(hvp_method):
    config = engine.InterleavingConfig(hvp_method=hvp_method)
    # 2^12 against 2^15: a power of two inside each end of the range where nothing underflows
    # or overflows on every CPU measured. On CPUs without AVX-512 TF computes float16 in Eigen
    # rather than oneDNN, and at low scales the mixed second derivative's smallest backward
    # values reach float16's subnormals (measured on an AMD EPYC, 2026-12-03, against 2^14: 2^8
    # to 2^10, the default, differ by 9e-4 relative in the mixed part, both HVP methods; 2^11 to
    # 2^16 are bitwise equal; at 2^17 the float16 gradient overflows).
    low, high = (
        _stage_outputs(make_engine(config, "mixed_float16", scale)) for scale in (2.0**12, 2.0**15)
    )
    for name, a, b in zip(("gradient", "validation", "mixed"), low, high):
        # Powers of two commute with rounding: equal up to float32 round-off of the unscaling.
        assert relative(flat(b), flat(a)) < 1e-6, name


def test_float16_chain_hypergradient_does_not_depend_on_the_loss_scale():
    # K=2, M=2: each stage computation is scale-invariant to round-off (above); along the chain
    # a value near float16's subnormal range at the lower scale perturbs the cotangent handed
    # to the previous stage by float32 round-off, which that stage rounds to float16 differently
    # (measured: 2.6e-5 relative, every stage but one bitwise equal). At S = 1 this net already
    # loses ~1e-3 to underflow, hence 2^10 (the default) against 2^14.
    config = engine.InterleavingConfig(num_learners=2, rounds=2, proximal_strength=0.5)
    train, val = make_batches(make_engine(config))
    low, high = (
        flat(make_engine(config, "mixed_float16", s).arch_gradient(train, val, LEARNING_RATE)[0])
        for s in (2.0**10, 2.0**14)
    )
    assert relative(high, low) < 1e-4


def test_a_tiny_direction_does_not_underflow_in_the_float16_mixed_derivative():
    # d * 2^-30 would flush every forward tangent to zero in float16; the direction scale
    # (a power of two, ``precision.direction_scale``) makes the result exactly linear in d.
    eng = make_engine(engine.InterleavingConfig(), "mixed_float16", precision.DEFAULT_LOSS_SCALE)
    _, _, mixed = _stage_outputs(eng)
    _, _, tiny = _stage_outputs(eng, direction_factor=2.0**-30)
    assert relative(flat(tiny), flat(mixed)) < 1e-6 and np.linalg.norm(flat(mixed)) > 0


def test_loss_scaling_rescues_gradients_that_underflow_in_float16():
    # A head 2^-18 times smaller: the cotangents reaching the encoder shrink with it, most of
    # them below float16's smallest subnormal (6e-8), while the head's own weights (~1e-6) are
    # still representable. Unscaled, most encoder gradient entries flush to exactly 0; with
    # S = 2^16 the gradient is as accurate as at the normal head size (error ~7e-2 both).
    def encoder_gradient(policy, scale):
        eng = make_engine(engine.InterleavingConfig(), policy, scale)
        state = eng.learners[0].states[0]
        state.head_weights.assign(state.head_weights * 2.0**-18)
        train, _ = make_batches(eng)
        mixing = eng.architecture.mixing(eng.architecture.parameters)
        return eng.functions.gradient(0)(
            state.encoder_weights, state.head_weights, *mixing, *train[0]
        )[0].numpy()

    reference = encoder_gradient(None, None)
    unscaled = encoder_gradient("mixed_float16", 1.0)
    scaled = encoder_gradient("mixed_float16", 2.0**16)
    zeros = [float(np.mean(g == 0)) for g in (reference, unscaled, scaled)]
    errors = [relative(g, reference) for g in (unscaled, scaled)]
    print(f"zero fraction f32, S=1, S=2^16: {zeros}; error S=1, S=2^16: {errors}")
    assert zeros[1] > zeros[0] + 0.2 and zeros[2] <= zeros[0] + 0.01
    assert errors[0] > 0.3 and errors[1] < 0.3 * errors[0]


def test_run_search_in_mixed_bfloat16_writes_float32_state_and_the_genotype(data_dir, tmp_path):
    bindings = [
        f"run_search.data_dir = '{data_dir}'",
        "run_search.mixed_precision = 'mixed_bfloat16'",
        "InterleavingConfig.mode = 'first_order'",  # compiles in seconds (as test_search_cli)
        "run_search.max_steps = 1",
    ]
    results = run_in_process(["gin/demo.gin", "gin/smoke.gin"], bindings, tmp_path)
    assert results["steps"] == 1
    assert (tmp_path / "genotype.json").exists() and (tmp_path / "genotype.dot").exists()
    assert (
        "run_search.mixed_precision = 'mixed_bfloat16'"
        in (tmp_path / "operative_config.gin").read_text()
    )
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    dtypes = reader.get_variable_to_dtype_map()
    # The optimizers' learning rate is a float64 hyperparameter in every run (``optimizers``).
    floats = {n: d for n, d in dtypes.items() if d.is_floating and "_learning_rate" not in n}
    assert any("alpha_normal" in n for n in floats) and any("encoder_weights" in n for n in floats)
    assert all(d == tf.float32 for d in floats.values()), {
        n: d for n, d in floats.items() if d != tf.float32
    }


def test_a_float16_overflow_stops_the_run_naming_the_loss_scale(data_dir, tmp_path):
    # S = 2^30: the scaled cotangents exceed float16's 65504 at once; the step's outputs are
    # not finite and the run loop stops before anything non-finite is checkpointed.
    bindings = [
        f"run_search.data_dir = '{data_dir}'",
        "run_search.mixed_precision = 'mixed_float16'",
        "run_search.loss_scale = 1073741824.0",
        "InterleavingConfig.mode = 'first_order'",
        "run_search.max_steps = 1",
    ]
    with pytest.raises(run_loop.NonFiniteLossError) as error:
        run_in_process(["gin/demo.gin", "gin/smoke.gin"], bindings, tmp_path)
    message = str(error.value)
    assert "became [nan" in message and "at step 1 (epoch 1); the search stopped" in message
    assert "lower run_search.loss_scale (now 1.07374e+09)" in message


@pytest.mark.parametrize(
    "bindings, message",
    [
        (["run_search.mixed_precision = 'fp8'"], "run_search.mixed_precision='fp8' is invalid"),
        (
            ["run_search.mixed_precision = 'mixed_float16'", "run_search.loss_scale = 1000.0"],
            "run_search.loss_scale=1000.0 is invalid: expected None or a power of two",
        ),
        (
            ["run_search.loss_scale = 1024.0"],
            "run_search.loss_scale=1024.0 is invalid: expected None unless mixed_precision",
        ),
        (
            [
                "run_search.mixed_precision = 'mixed_float16'",
                "InterleavingConfig.exact_method = 'nested_tapes'",
            ],
            "run_search.mixed_precision='mixed_float16' is invalid: expected None or "
            "'mixed_bfloat16' with InterleavingConfig.mode='exact', exact_method='nested_tapes'",
        ),
    ],
)
def test_bad_precision_settings_give_one_clear_error(bindings, message, tmp_path):
    with pytest.raises(ValueError) as error:
        run_in_process(["gin/demo.gin", "gin/smoke.gin"], bindings, tmp_path / "run")
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


def test_learner_refuses_mixed_layer_policies_and_bad_loss_scales():
    encoder = search_space.SearchEncoder(2, 3, steps=2, multiplier=2, dtype="mixed_bfloat16")
    with pytest.raises(ValueError, match="dtype policy 'mixed_bfloat16' and the head's 'float32'"):
        learner.Learner(encoder, search_space.ClassifierHead(3), IMAGE_SHAPE)
    for bad in (0.0, 3.0, float("inf"), "1024", True):
        with pytest.raises(ValueError, match="loss_scale=.* is invalid: expected None or a power"):
            precision.check_loss_scale("loss_scale", bad)
    assert precision.check_loss_scale("loss_scale", 2**-3) == 0.125


SYNCHRONISED_BN = """
import json, sys
import numpy as np, tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ilnas_tf import ops
x = (np.random.default_rng(0).normal(size=(8, 8, 8, 4)) + 30.0).astype(np.float32)
reference = ops.batch_norm(tf.constant(x, tf.float64)).numpy()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
errors = {}
for dtype in (tf.float16, tf.bfloat16):
    halves = [tf.constant(x[:4], dtype), tf.constant(x[4:], dtype)]
    values = strategy.experimental_distribute_values_from_function(
        lambda context: halves[context.replica_id_in_sync_group])
    out = strategy.run(tf.function(ops.batch_norm), args=(values,))
    y = np.concatenate([tf.cast(t, tf.float64).numpy() for t in strategy.experimental_local_results(out)])
    single = tf.cast(ops.batch_norm(tf.constant(x, dtype)), tf.float64).numpy()
    errors[dtype.name] = [float(np.max(np.abs(v - reference))) for v in (y, single)]
print(json.dumps(errors))
"""


def test_synchronised_batch_norm_keeps_its_statistics_in_float32_under_mixed_precision():
    # Two replicas: the global moments are all-reduced sums. In float16 / bfloat16 the count
    # overflows float16 beyond 65504 values and E[x^2] - mean^2 cancels catastrophically (a
    # mean of 30: errors of 3 in float16, NaN in bfloat16); in float32 the replicas' result is
    # as accurate as one device's fused kernel.
    result = subprocess.run(
        [sys.executable, "-c", SYNCHRONISED_BN],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for dtype, (mirrored, single) in errors.items():
        assert mirrored <= 1.5 * single, (dtype, mirrored, single)
