"""Runs a module as ``__main__`` with the CPU split into N logical devices.

Usage: python tests/logical_cpus.py N MODULE [ARGS...]
(e.g. ``python tests/logical_cpus.py 2 ilnas_tf.search --gin_bindings=...``). The logical
devices must be configured before TensorFlow initialises, hence this launcher.
"""

from __future__ import annotations

import os
import runpy
import sys

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

count, module = int(sys.argv[1]), sys.argv[2]
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
)
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
