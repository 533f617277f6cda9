"""Test-only launcher: the run loop's toy search under ``cli.run``, with one injected fault.

``python tests/fault_launcher.py ROOT_DIR FAULT`` runs the one-learner first-order toy search
of ``test_run_loop`` (8x8 random images, 1 warm-up + 1 search epoch of 2 steps, a checkpoint
after every step, op determinism on) through ``cli.run`` (the commands' main: signal
handling, one-line messages, exit codes), after a monkeypatch that makes FAULT happen at a
precise moment. FAULT is ``none`` or ``ACTION@PLACE[:N]``:

* ACTION ``kill`` (SIGKILL to itself: a kill -9), ``term`` (SIGTERM), ``int`` (SIGINT);
* PLACE ``inputs:N`` (while fetching the batches of the N-th step of this process),
  ``state_file:N`` (inside the save of checkpoint N: its files written, the state file not
  yet naming it), ``sweep`` (inside a checkpoint rotation, after the oldest checkpoint's
  index is deleted and before its data), ``evaluate`` (the final evaluation), ``results``
  (writing results.json: the temporary file written, not yet renamed).

Nothing here is part of the package: the faults are test scaffolding only.
"""

from __future__ import annotations

import os
import signal
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]  # this checkout's package and test helpers

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def _inject(fault):
    """Monkeypatches the place of ``fault`` to send its signal to this process."""
    from tensorflow.python.checkpoint import checkpoint_management

    from ilnas_tf import run_dir, search_loop

    action, _, place = fault.partition("@")
    place, _, count = place.partition(":")
    signum, count = SIGNALS[action], int(count or 1)
    calls = {"n": 0}

    def fire():
        os.kill(os.getpid(), signum)

    def patch(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before and before(*args, **kwargs):
                fire()
            result = original(*args, **kwargs)
            if after and after(*args, **kwargs):
                fire()
            return result

        setattr(owner, name, wrapper)

    def nth(*args, **kwargs):
        calls["n"] += 1
        return calls["n"] == count

    if place == "inputs":
        patch(search_loop.SearchTask, "next_inputs", before=nth)
    elif place == "state_file":
        patch(
            checkpoint_management,
            "update_checkpoint_state_internal",
            before=lambda *a, **k: str(k.get("model_checkpoint_path", "")).endswith(f"-{count}"),
        )
    elif place == "sweep":
        patch(checkpoint_management, "_delete_file_if_exists", after=lambda *a, **k: True)
    elif place == "evaluate":
        patch(search_loop.SearchTask, "evaluate", before=lambda *a, **k: True)
    elif place == "results":
        original = run_dir.write_atomically

        def write(path, text):
            if path.endswith("results.json"):
                with open(f"{path}.tmp", "w") as handle:
                    handle.write(text[: len(text) // 2])
                fire()
            return original(path, text)

        run_dir.write_atomically = write
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def toy_run(root_dir):
    import tensorflow as tf
    from test_run_loop import _batches, _search

    tf.config.experimental.enable_op_determinism()
    task, loop = _search(root_dir, max_steps=None)
    # Batch t of each stream depends on t only (one train stage, one val batch per step), as
    # the commands' streams: a resumed run reads what an uninterrupted one would.
    task.make_streams = lambda step: [
        (_batches(0).repeat().skip(step), _batches(1).repeat().skip(step))
    ]
    return loop.run()


def main():
    root_dir, fault = sys.argv[1], sys.argv[2]
    from absl import app

    from ilnas_tf import cli

    def absl_main(argv):
        del argv
        import test_run_loop  # noqa: F401  (registers every gin configurable before gin locks)

        if fault != "none":
            _inject(fault)
        cli.run("search", lambda root_dir, **_: toy_run(root_dir), [])

    app.run(absl_main, argv=[sys.argv[0], f"--root_dir={root_dir}"])


if __name__ == "__main__":
    main()
