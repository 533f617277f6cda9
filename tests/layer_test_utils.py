"""Shared keras-hub-style layer test helper.

``run_layer_test`` checks, for one layer class and one set of constructor arguments:

* the layer builds on its first call and produces ``expected_output_shape``;
* ``compute_output_shape`` (when the class overrides it) agrees with the eager output;
* the config round trip ``from_config(get_config()).get_config() == get_config()`` and every
  constructor argument is reflected in the config;
* the serialisation round trip (``keras.saving.serialize_keras_object`` -> JSON ->
  ``deserialize_keras_object``) gives a layer of the same class and config;
* that layer, given the original weights with ``set_weights(get_weights())``, reproduces the
  original output (callers pass ``call_kwargs`` such as ``training=False`` for layers whose
  output is not deterministic otherwise);
* optionally (``tmp_path``) a ``.keras`` save/load round trip of a functional model wrapping
  the layer reproduces the output too;
* optionally the number of trainable parameters.

``input_data`` is a tensor / array (the single positional input) or a tuple/list of them
(positional inputs, e.g. ``(s0, s1, weights)``).
"""

from __future__ import annotations

import json

import keras
import numpy as np

__all__ = ["count_params", "run_layer_test"]


def count_params(variables) -> int:
    """Number of scalar parameters in ``variables``."""
    return int(sum(int(np.prod(v.shape)) for v in variables))


def _as_args(input_data):
    if isinstance(input_data, (tuple, list)):
        return tuple(input_data)
    return (input_data,)


def _normalise(value):
    """Tuples become lists (configs store lists), recursively."""
    if isinstance(value, (tuple, list)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _assert_outputs_close(expected, actual, rtol, atol, what):
    expected_flat = keras.tree.flatten(expected)
    actual_flat = keras.tree.flatten(actual)
    assert len(expected_flat) == len(actual_flat), what
    for e, a in zip(expected_flat, actual_flat):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(e),
            rtol=rtol,
            atol=atol,
            err_msg=what,
        )


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    call_kwargs=None,
    tmp_path=None,
    expected_num_trainable_params=None,
    rtol=1e-6,
    atol=1e-6,
):
    """Runs the standard layer checks (see module docstring); returns the built layer."""
    call_kwargs = dict(call_kwargs or {})
    args = _as_args(input_data)

    # 1. Build on first call, output shape.
    layer = layer_cls(**init_kwargs)
    output = layer(*args, **call_kwargs)
    assert layer.built, f"{layer_cls.__name__} is not built after its first call"
    if isinstance(output, (tuple, list)):
        output_shape = [tuple(t.shape) for t in output]
        expected_shape = [tuple(s) for s in expected_output_shape]
    else:
        output_shape = tuple(output.shape)
        expected_shape = tuple(expected_output_shape)
    assert output_shape == expected_shape, (
        f"{layer_cls.__name__}: output shape {output_shape}, expected {expected_shape}"
    )
    if len(args) == 1 and type(layer).compute_output_shape is not (
        keras.layers.Layer.compute_output_shape
    ):
        assert tuple(layer.compute_output_shape(tuple(args[0].shape))) == expected_shape

    if expected_num_trainable_params is not None:
        actual = count_params(layer.trainable_weights)
        assert actual == expected_num_trainable_params, (
            f"{layer_cls.__name__}: {actual} trainable parameters, expected "
            f"{expected_num_trainable_params}"
        )

    # 2. Config round trip; constructor arguments appear in the config.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        if key == "dtype":
            continue
        assert key in config, f"{layer_cls.__name__}.get_config() lacks {key!r}"
        assert _normalise(config[key]) == _normalise(value), (
            f"{layer_cls.__name__}.get_config()[{key!r}] = {config[key]!r}, expected {value!r}"
        )
    revived_config = layer_cls.from_config(config).get_config()
    assert revived_config == config, (
        f"{layer_cls.__name__}: config round trip changed the config:\n"
        f"{config}\n!=\n{revived_config}"
    )

    # 3. Serialisation round trip (must survive JSON).
    serialized = keras.saving.serialize_keras_object(layer)
    serialized = json.loads(json.dumps(serialized))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls, f"deserialised {type(revived)}, expected {layer_cls}"
    assert revived.get_config() == config

    # 4. Same weights -> same output.
    revived(*args, **call_kwargs)
    original_weights = layer.get_weights()
    assert len(revived.weights) == len(layer.weights)
    for w_revived, w_original in zip(revived.weights, layer.weights):
        assert tuple(w_revived.shape) == tuple(w_original.shape)
    revived.set_weights(original_weights)
    revived_output = revived(*args, **call_kwargs)
    _assert_outputs_close(
        output, revived_output, rtol, atol, f"{layer_cls.__name__}: rebuilt layer differs"
    )

    # 5. Optional .keras round trip of a functional model wrapping the layer.
    if tmp_path is not None:
        assert len(args) == 1, "the .keras round trip supports single-input layers only"
        x = args[0]
        inputs = keras.Input(batch_shape=tuple(x.shape), dtype=str(keras.ops.dtype(x)))
        inner = layer_cls.from_config(config)
        model = keras.Model(inputs, inner(inputs, **call_kwargs))
        inner.set_weights(original_weights)
        path = str(tmp_path / f"{layer_cls.__name__}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        _assert_outputs_close(
            output,
            loaded(x),
            rtol,
            atol,
            f"{layer_cls.__name__}: .keras round trip differs",
        )
    return layer
