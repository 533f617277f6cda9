"""Forward-mode autodiff through a MirroredStrategy all-reduce, eager and in a tf.function.

Usage: python tests/replica_forward_mode_check.py
Prints one JSON object: the JVP of y = all_reduce(r * x * x) (replica r = 1, 2) in direction t
per replica, eagerly and traced, the reverse-mode value, and the HVP method the stage
functions use on two replicas. Run as its own process (two logical CPUs).
"""

from __future__ import annotations

import json

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

from ilnas_tf import stage_functions  # noqa: E402


def derivatives():
    context = tf.distribute.get_replica_context()
    r = tf.cast(context.replica_id_in_sync_group, tf.float64) + 1.0
    x = tf.constant([1.0, 2.0], tf.float64)
    t = tf.constant([1.0, 0.0], tf.float64)
    with tf.autodiff.ForwardAccumulator(x, t) as accumulator:
        y = context.all_reduce("sum", r * x * x)
    forward = accumulator.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = context.all_reduce("sum", r * x * x)
    # Reverse mode: the sum over replicas of d<y, t>/dx is the JVP's sum (y is linear in r).
    reverse = tape.gradient(y, x, output_gradients=t)
    return forward, reverse


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        method = stage_functions.StageFunctions([], "forward_over_reverse", shared=True)

    def values(per_replica):
        return [v.numpy().tolist() for v in strategy.experimental_local_results(per_replica)]

    eager = strategy.run(derivatives)
    traced = tf.function(lambda: strategy.run(derivatives))()
    inside = {}

    def record():
        inside["method"] = method.effective_hvp_method()
        return tf.constant(0)

    strategy.run(record)
    print(
        json.dumps(
            {
                "eager_forward": values(eager[0]),
                "traced_forward": values(traced[0]),
                "traced_reverse": values(traced[1]),
                "method_on_two_replicas": inside["method"],
                "method_on_one": method.effective_hvp_method(),
            }
        )
    )


if __name__ == "__main__":
    main()
