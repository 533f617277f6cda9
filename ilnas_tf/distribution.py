"""Distribution helpers: strategies by name, the chief, replica counts, all-reduce.

Everything else in the package is written for one replica and calls these where several
replicas change the computation (global-batch losses, summed gradients, synchronised batch
norms).
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name):
    """A ``tf.distribute.Strategy`` by name.

    ``default``: one device. ``mirrored``: all local GPUs (without GPUs: every logical CPU
    device). ``multi_worker``: ``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG``.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: one replica per logical CPU device (tests split the CPU into several).
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy={name!r} is invalid: expected one of {STRATEGIES}")


def is_chief(strategy):
    """Whether this process writes outputs: the only worker, or the chief of a cluster."""
    resolver = getattr(strategy.extended, "_cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def num_replicas():
    """Replicas of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce(tensors, op=tf.distribute.ReduceOp.SUM):
    """``tensors`` reduced over replicas (differentiably); unchanged on one replica.

    Call in replica context (inside ``strategy.run``); outside any strategy it is the identity.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return context.all_reduce(op, tensors)
