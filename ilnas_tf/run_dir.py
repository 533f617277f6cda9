"""Run-directory helpers: the run record, atomic writes, checkpoint variable maps.

Shared by the search and training commands (``run_loop``, ``search_loop``, ``train_loop``),
the export (``export``) and the tools. Nothing here knows about a particular task.

**A run directory is a contract.** ``root_dir/run.json`` records what the directory holds:
the command (``search`` or ``train``), its command line, the *fingerprint* (every setting
that defines the run, as ``name: repr(value)``) and, once the run has finished, the steps it
completed. A rerun is checked against it before anything is written (``check_run``):

* the same fingerprint resumes, or, when the run is complete, says so and changes nothing;
* another fingerprint is refused with the differing settings, unless the command passes
  ``--fresh_start`` (delete the run's outputs and start over) or ``--force_resume`` (continue
  from the latest checkpoint with the new settings; the change is appended to ``history``
  and the earlier ``operative_config.gin`` kept as ``operative_config_until_step_N.gin``);
* a search refuses a training run's directory and vice versa, and a directory holding run
  outputs without a record is refused too (it cannot be told what it holds).

Settings that may change on resume are left out of the fingerprint (``RESUMABLE``): where the
data live, the distribution strategy, op determinism and the output cadence (summaries,
checkpoints, how many are kept, ``max_steps``, the search's memory option ``recompute``, and for training the test cadence and the
export). They change how or how far a run proceeds, never what one step computes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import tensorflow as tf

RECORD = "run.json"
RESUMABLE = (
    "data_dir",
    "strategy",
    "deterministic",
    "summary_every_steps",
    "checkpoint_every_steps",
    "max_to_keep",
    "max_steps",
    "recompute",
    "eval_every_epochs",
    "export",
)
# What each command writes under root_dir (``--fresh_start`` removes these and nothing else).
OUTPUTS = {
    "search": ("checkpoints", "summaries", "genotypes", "genotype.json", "genotype.dot",
               "results.json", "operative_config.gin", "stages"),
    "train": ("model.json", "checkpoints", "summaries", "export", "results.json",
              "operative_config.gin"),
}  # fmt: skip
COMMANDS = {"search": "a search", "train": "a training"}


def fingerprint(prefix, settings, extra=None):
    """``{f"{prefix}.{name}": repr(value)}`` of the defining ``settings`` (``RESUMABLE`` left
    out), with ``extra`` entries (``{"InterleavingConfig.mode": value}``) added."""
    result = {f"{prefix}.{k}": repr(v) for k, v in settings.items() if k not in RESUMABLE}
    result.update({k: repr(v) for k, v in (extra or {}).items()})
    return dict(sorted(result.items()))


def read_record(root_dir):
    """The run record of ``root_dir`` (None: none); ValueError naming it when unreadable."""
    path = os.path.join(root_dir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        record["command"], record["fingerprint"]  # noqa: B018 (required keys)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"root_dir {root_dir!r}: its run record {path!r} is unreadable ({error}); pass "
            "--fresh_start to start a new run there, or use another --root_dir"
        ) from None
    return record


def _outputs_present(root_dir):
    names = {name for outputs in OUTPUTS.values() for name in outputs}
    return sorted(n for n in names if os.path.exists(os.path.join(root_dir, n)))


def check_run(root_dir, command, settings, *, fresh_start=False, force_resume=False):
    """What ``root_dir`` holds for a run of ``command`` with fingerprint ``settings``.

    Reads only. Returns ``(state, record)``: ``state`` is ``"new"`` (nothing there, or
    ``fresh_start``), ``"resume"`` or ``"complete"`` (the record's ``completed_steps`` is set;
    the caller compares it with the steps asked for). Raises ValueError for another
    command's directory, other settings (without ``force_resume``) and unrecorded outputs.
    """
    record = read_record(root_dir) if os.path.isdir(root_dir) else None
    if fresh_start:
        return "new", record
    if record is None:
        present = _outputs_present(root_dir) if os.path.isdir(root_dir) else []
        if present:
            raise ValueError(
                f"root_dir {root_dir!r} holds run outputs ({', '.join(present)}) but no run "
                f"record ({RECORD}), so what it holds cannot be checked: use another "
                "--root_dir, or pass --fresh_start to delete those outputs and start over"
            )
        return "new", None
    if record["command"] != command:
        raise ValueError(
            f"root_dir {root_dir!r} holds {COMMANDS.get(record['command'], 'another')} run, "
            f"not {COMMANDS[command]} run: use another --root_dir (or --fresh_start to "
            "delete it and start over)"
        )
    changes = differences(record["fingerprint"], settings)
    if changes and not force_resume:
        raise ValueError(
            f"root_dir {root_dir!r} holds a {command} run with other settings: "
            f"{'; '.join(changes)}. Rerun with the recorded settings to resume, use another "
            "--root_dir or --fresh_start to start a new run, or --force_resume to continue "
            "this one with the new settings (settings that may change on resume: "
            f"{', '.join(RESUMABLE)})"
        )
    if record.get("completed_steps") is not None:
        return "complete", record
    return "resume", record


ADDED_SETTINGS = {
    "run_search.mixed_precision": "None",
    "run_search.loss_scale": "None",
    "run_search.partial_channels": "1",
    "run_search.edge_normalization": "False",
    "run_search.progressive": "False",
    "run_search.gates": "False",
}
"""Fingerprint entries added after runs were first recorded, with the value (repr) that runs
recorded without them used: a record that lacks one of them resumes when the current value
is that default (so a new setting does not lock existing run directories)."""


def differences(recorded, current):
    """``["name: recorded -> current", ...]`` of the settings that differ (``ADDED_SETTINGS``
    stand in for entries a record lacks)."""
    missing = "(unset)"
    recorded = {**{k: v for k, v in ADDED_SETTINGS.items() if k in current}, **recorded}
    return [
        f"{name}: {recorded.get(name, missing)} recorded, {current.get(name, missing)} now"
        for name in sorted(set(recorded) | set(current))
        if recorded.get(name) != current.get(name)
    ]


def start_run(root_dir, command, settings, state, record, *, step=None):
    """Writes the run record of a run that passed ``check_run`` (the chief only).

    A ``"new"`` run first removes what ``fresh_start`` asked to delete (the outputs of
    ``OUTPUTS``, the record); a resumed one with changed settings (``--force_resume``) appends
    the change to the record's ``history`` and keeps the earlier operative config.
    """
    os.makedirs(root_dir, exist_ok=True)
    if state == "new":
        for name in {n for outputs in OUTPUTS.values() for n in outputs} | {RECORD}:
            path = os.path.join(root_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        record = {"command": command, "argv": list(sys.argv), "fingerprint": settings,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "completed_steps": None,
                  "history": []}  # fmt: skip
    else:
        changes = differences(record["fingerprint"], settings)
        if changes:
            config = os.path.join(root_dir, "operative_config.gin")
            if os.path.exists(config):
                os.replace(
                    config, os.path.join(root_dir, f"operative_config_until_step_{step}.gin")
                )
            record.setdefault("history", []).append(
                {"step": step, "argv": list(sys.argv), "changes": changes,
                 "previous_fingerprint": record["fingerprint"]}
            )  # fmt: skip
            record["fingerprint"] = settings
        record["completed_steps"] = None
    write_record(root_dir, record)
    return record


def already_complete(command, root_dir, record):
    """Says that ``root_dir``'s run is complete and returns its results (nothing is written)."""
    path = os.path.join(root_dir, "results.json")
    print(
        f"ilnas_tf.{command}: root_dir {root_dir} holds a complete run "
        f"({record['completed_steps']} steps): already complete, nothing to do (results: "
        f"{path}; --fresh_start runs it again)",
        flush=True,
    )
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {"steps": record["completed_steps"]}


def latest_step(root_dir):
    """The step of the latest checkpoint under ``root_dir/checkpoints`` (0: none)."""
    latest = tf.train.latest_checkpoint(os.path.join(root_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def write_record(root_dir, record):
    write_atomically(os.path.join(root_dir, RECORD), json.dumps(record, indent=2))


def finish_run(root_dir, steps):
    """Marks the recorded run complete at ``steps`` (after its results are written)."""
    record = read_record(root_dir)
    if record is not None:
        record["completed_steps"] = int(steps)
        write_record(root_dir, record)


def check_tf_config(strategy):
    """ValueError naming ``TF_CONFIG`` when ``strategy='multi_worker'`` and it is malformed."""
    if strategy != "multi_worker":
        return
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():  # no cluster: one worker
        return
    expected = 'JSON like {"cluster": {"worker": ["host:port", ...]}, "task": {"type": ...}}'
    try:
        config = json.loads(text)
        valid = isinstance(config, dict) and isinstance(config.get("cluster"), dict)
        valid = valid and isinstance(config.get("task", {}), dict)
    except ValueError as error:
        raise ValueError(
            f"environment variable TF_CONFIG={text!r} is invalid ({error}): expected {expected}"
        ) from None
    if not valid:
        raise ValueError(f"environment variable TF_CONFIG={text!r} is invalid: expected {expected}")


def write_atomically(path, text):
    """Writes ``text`` to ``path`` so that the file is complete or absent (rename)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def check_data_dir(name, data_dir):
    """``data_dir`` as a string (None stays None); ValueError when it names a non-directory."""
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
        raise ValueError(f"{name}={data_dir!r} is invalid: expected a directory path")
    data_dir = os.fspath(data_dir)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"{name}={data_dir!r} is invalid: expected a directory, not a file")
    return data_dir


def check_root_dir(root_dir):
    """Creates ``root_dir``; ValueError naming it when it is not a writable directory."""
    try:
        os.makedirs(root_dir, exist_ok=True)
        probe = os.path.join(root_dir, f".write_test_{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"root_dir {root_dir!r} is not a writable directory: {error}") from None


def variable_map(variables, prefix=""):
    """``{key: variable}`` with keys from the paths (``prefix/`` removed, duplicates numbered)."""
    result = {}
    for variable in variables:
        key = variable.path
        if prefix and key.startswith(prefix + "/"):
            key = key[len(prefix) + 1 :]
        base, index = key, 1
        while key in result:
            key, index = f"{base}_{index}", index + 1
        result[key] = variable
    return result


def model_checkpoint(model, **extra):
    """A ``tf.train.Checkpoint`` of every variable of ``model`` (plus ``extra`` objects).

    Keras 3 networks that keep layers in Python lists are not fully tracked by
    ``tf.train.Checkpoint(model=model)``; this lists the variables explicitly.
    """
    return tf.train.Checkpoint(model_variables=variable_map(model.variables, model.name), **extra)


def restore_model_variables(model, checkpoint_prefix):
    """Restores ``model``'s variables from a training checkpoint (optimizer state ignored)."""
    status = model_checkpoint(model).restore(checkpoint_prefix)
    status.expect_partial().assert_existing_objects_matched()
