"""What a sweep runs: its definition (``SweepConfig``), the plan of runs, and checking it.

A sweep is a base experiment (search gin files and bindings, optionally a training protocol),
a grid of gin bindings (the product of its axes, e.g. ``{'InterleavingConfig.proximal_strength':
[1.0, 10.0, 100.0]}``), optional named variants (each a list of bindings, combined with every
grid point: IL vs MTL vs DARTS) and a list of seeds. Every (point, seed) is one *run*: a search
in ``<root>/<point>/seed_<s>/search`` and, with a training protocol, one training of its
genotype per training dataset in ``.../train`` (or ``.../train_<dataset>``). Each is an
ordinary ``ilnas_tf.search`` / ``ilnas_tf.train`` command, so every run directory keeps the
run-directory contract (``run_dir``): a rerun skips finished runs and resumes unfinished ones.

``plan`` checks everything before any run starts (``SweepError``, one message): the root, the
grid and seeds, every point's gin bindings (unknown names, values of another type than the
parameter's, and the search's and training's own setting checks).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import re
import shlex
import sys

import gin
from ilnas_tf import cli

PLAN_FILE = "sweep.json"
SEARCH_CONFIGURABLES = ("ilnas_tf.search", "ilnas_tf.engine", "ilnas_tf.progressive",
                        "ilnas_tf.pr_darts")  # fmt: skip
TRAIN_CONFIGURABLES = ("ilnas_tf.train",)


class SweepError(ValueError):
    """A bad sweep definition: reported as one line before any run starts."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A sweep's definition (bound in a sweep gin file, ``sweeps/*.gin``).

    Attributes:
      search_gin_files: the base search experiment (repository-relative or absolute paths).
      search_bindings: gin bindings added to every search (after the files).
      grid: ``{binding name: [values]}``; the points are the product of the axes, in order.
      variants: ``{name: [bindings]}``: each grid point once per variant (its bindings after
        the grid's); empty: no variants.
      seeds: one run per seed per point (bound to ``run_search.seed`` and ``run_train.seed``).
      train_gin_files: the training protocol of each run's genotype (``ilnas_tf.train``);
        None: search only.
      train_bindings: gin bindings added to every training.
      train_datasets: train each genotype on each of these (``run_train.dataset``); None:
        the protocol's own dataset, in ``.../train``.
    """

    search_gin_files: tuple = ()
    search_bindings: tuple = ()
    grid: dict = dataclasses.field(default_factory=dict)
    variants: dict = dataclasses.field(default_factory=dict)
    seeds: tuple = (0,)
    train_gin_files: tuple | None = None
    train_bindings: tuple = ()
    train_datasets: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its directory name, its swept values and the bindings they make."""

    name: str
    values: dict
    variant: str | None
    bindings: tuple


@dataclasses.dataclass(frozen=True)
class Run:
    """One (point, seed): a search and its trainings, each an independent command."""

    point: Point
    seed: int
    search_dir: str
    search_command: tuple
    train_dirs: dict  # {dataset or None: root_dir}
    train_commands: dict

    @property
    def label(self):
        return f"{self.point.name} seed {self.seed}"

    def shell_command(self):
        """One line running the search, then (if it succeeded) each training."""
        commands = [self.search_command, *self.train_commands.values()]
        return " && ".join(shlex.join(c) for c in commands)


def _fail(message):
    raise SweepError(message)


def resolve_gin_file(path):
    """``path`` as given if it exists, else relative to the repository root; absolute."""
    if not os.path.isabs(path) and not os.path.exists(path):
        candidate = os.path.join(cli.REPO_ROOT, path)
        if os.path.exists(candidate):
            path = candidate
    if not os.path.isfile(path):
        _fail(f"gin file {path!r} does not exist (expected a file, absolute or relative to "
              f"the current directory or {cli.REPO_ROOT})")  # fmt: skip
    return os.path.abspath(path)


def _strings(name, value):
    if isinstance(value, str) or not isinstance(value, list | tuple):
        _fail(f"SweepConfig.{name}={value!r} is invalid: expected a list of strings")
    for item in value:
        if not isinstance(item, str):
            _fail(f"SweepConfig.{name} entry {item!r} is invalid: expected a string")
    return tuple(value)


def _check_definition(config):
    """The shape of ``config`` (types, emptiness), before any gin parsing."""
    if not isinstance(config.grid, dict) or not isinstance(config.variants, dict):
        _fail("SweepConfig.grid and SweepConfig.variants must be dicts "
              f"(got {config.grid!r} and {config.variants!r})")  # fmt: skip
    if not config.grid and not config.variants:
        _fail(
            "the sweep's grid is empty: bind SweepConfig.grid = {'<configurable>.<parameter>':"
            " [values, ...]} and/or SweepConfig.variants = {'<name>': [bindings, ...]}"
        )
    for key, values in config.grid.items():
        if not isinstance(key, str) or not re.fullmatch(r"[\w./]+\.\w+", key):
            _fail(f"SweepConfig.grid key {key!r} is invalid: expected a gin parameter name "
                  "such as 'run_search.epochs'")  # fmt: skip
        if isinstance(values, str) or not isinstance(values, list | tuple) or not values:
            _fail(f"SweepConfig.grid[{key!r}]={values!r} is invalid: expected a non-empty list "
                  "of values")  # fmt: skip
    for name, bindings in config.variants.items():
        if not isinstance(name, str) or not re.fullmatch(r"[\w.=-]+", name):
            _fail(f"SweepConfig.variants name {name!r} is invalid: expected letters, digits, "
                  "'_', '.', '=' or '-' (it names a directory)")  # fmt: skip
        _strings(f"variants[{name!r}]", bindings)
    seeds = config.seeds
    if isinstance(seeds, str) or not isinstance(seeds, list | tuple) or not seeds:
        _fail(f"SweepConfig.seeds={seeds!r} is invalid: expected a non-empty list of ints")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            _fail(f"SweepConfig.seeds entry {seed!r} is invalid: expected an int >= 0")
    if len(set(seeds)) != len(seeds):
        _fail(f"SweepConfig.seeds={seeds!r} repeats a seed")
    _strings("search_gin_files", config.search_gin_files)
    _strings("search_bindings", config.search_bindings)
    _strings("train_bindings", config.train_bindings)
    if config.train_gin_files is not None:
        _strings("train_gin_files", config.train_gin_files)
    if config.train_datasets is not None:
        if not _strings("train_datasets", config.train_datasets):
            _fail("SweepConfig.train_datasets=() is invalid: expected None or dataset names")


def _short(value):
    """A directory-safe short text of a swept value."""
    if isinstance(value, list | tuple):
        text = "_".join(_short(v) for v in value)
    else:
        text = str(value).split("/")[-1] if isinstance(value, str) else repr(value)
    return re.sub(r"[^\w.=-]+", "_", text).strip("_") or "empty"


def points(config):
    """The grid points of ``config`` (product of the axes, times the variants)."""
    keys = list(config.grid)
    combos = list(itertools.product(*(config.grid[k] for k in keys)))
    variants = list(config.variants.items()) or [(None, ())]
    result, names = [], set()
    for variant, extra in variants:
        for combo in combos:
            values = dict(zip(keys, combo))
            parts = ([variant] if variant else []) + [
                f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in values.items()
            ]
            name = "__".join(parts)
            while name in names:
                name += "_"
            names.add(name)
            bindings = tuple(f"{k} = {v!r}" for k, v in values.items()) + tuple(extra)
            result.append(Point(name, values, variant, bindings))
    return result


def _reference_value(key):
    """The value ``key`` has in the parsed config (its binding, else the default)."""
    try:
        return gin.query_parameter(key)
    except ValueError:
        pass
    configurable, parameter = key.rsplit(".", 1)
    function = gin.get_configurable(configurable.split("/")[-1])
    default = inspect.signature(function).parameters[parameter].default
    return None if default is inspect.Parameter.empty else default


def _same_kind(value, reference):
    if reference is None or value is None:
        return True
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(reference, bool) and isinstance(value, bool)
    if isinstance(reference, int | float):
        return isinstance(value, int | float)
    if isinstance(reference, list | tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(reference))


def _parse(what, files, bindings):
    """Parses gin ``files`` + ``bindings`` in a clean config; SweepError naming the source."""
    gin.clear_config()
    error = cli.gin_error(files, bindings, "gin file {!r}", "binding {!r}")
    if error:
        _fail(f"{what}: {error}")


def _resolved_keywords(function):
    """``function``'s keywords under the parsed gin config (defaults, then the bindings)."""
    name = function.__name__
    keywords = {
        k: p.default
        for k, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    keywords.update(gin.get_bindings(name))
    return keywords


def _check_point(what, values, files, bindings, check):
    """Parses ``files`` + ``bindings`` (the point's after the base's) and runs ``check``; each
    swept value must be of the kind of the parameter's base value (or default)."""
    try:
        _parse(what, files, bindings)  # unknown names and bad syntax first
        if values:
            point_bindings = bindings[-len(values) :]
            _parse(what, files, [b for b in bindings if b not in point_bindings])
            for key, value in values.items():
                reference = _reference_value(key)
                if not _same_kind(value, reference):
                    kind = type(reference).__name__
                    _fail(f"{what}: grid value {value!r} for {key} is invalid: expected "
                          f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} like its base value "
                          f"{reference!r}")  # fmt: skip
            _parse(what, files, bindings)
        check()
    except SweepError:
        raise
    except (ValueError, TypeError) as error:
        _fail(f"{what}: {cli.one_line(error)}")
    finally:
        gin.clear_config()


def _check_search():
    from ilnas_tf import engine, search

    keywords = _resolved_keywords(search.run_search)
    keywords = {k: v for k, v in keywords.items() if k not in ("fresh_start", "force_resume")}
    settings = search.check_settings(keywords)
    engine.InterleavingConfig(num_learners=len(settings["datasets"]))


def _check_train():
    from ilnas_tf import train

    keywords = _resolved_keywords(train.run_train)
    skip = ("fresh_start", "force_resume", "genotype")
    train.check_settings({k: v for k, v in keywords.items() if k not in skip})


def _command(module, root_dir, files, bindings, strategy, extra=()):
    command = [sys.executable, "-m", f"ilnas_tf.{module}", f"--root_dir={root_dir}", *extra]
    command += [f"--gin_file={path}" for path in files]
    command += [f"--gin_bindings={text}" for text in bindings]
    if strategy:
        command.append(f"--strategy={strategy}")
    return tuple(command)


def check_root(root_dir):
    """The sweep root as an absolute path; SweepError if it is a file."""
    root_dir = os.path.abspath(root_dir)
    if os.path.exists(root_dir) and not os.path.isdir(root_dir):
        _fail(f"--root_dir={root_dir!r} is a file: expected a directory (new or a sweep's)")
    return root_dir


def plan(config, root_dir, strategy=None):
    """Every run of the sweep, checked; SweepError before anything is written."""
    import importlib

    for module in SEARCH_CONFIGURABLES + TRAIN_CONFIGURABLES:
        importlib.import_module(module)
    root_dir = check_root(root_dir)
    _check_definition(config)
    search_files = [resolve_gin_file(p) for p in config.search_gin_files]
    train_files = [resolve_gin_file(p) for p in config.train_gin_files or ()]
    training = config.train_gin_files is not None
    datasets = list(config.train_datasets) if config.train_datasets else [None]
    runs = []
    for point in points(config):
        grid_bindings = point.bindings[: len(point.values)]
        variant_bindings = point.bindings[len(point.values) :]
        search_bindings = (*config.search_bindings, *variant_bindings, *grid_bindings)
        seed_binding = f"run_search.seed = {config.seeds[0]}"
        _check_point(f"point {point.name} (search)", point.values, search_files,
                     (seed_binding, *search_bindings), _check_search)  # fmt: skip
        for dataset in datasets if training else ():
            extra = (f"run_train.dataset = {dataset!r}",) if dataset else ()
            _check_point(f"point {point.name} (training)", {}, train_files,
                         (*config.train_bindings, *extra), _check_train)  # fmt: skip
        for seed in config.seeds:
            base = os.path.join(root_dir, point.name, f"seed_{seed}")
            search_dir = os.path.join(base, "search")
            search_command = _command("search", search_dir, search_files,
                                      (*search_bindings, f"run_search.seed = {seed}"),
                                      strategy)  # fmt: skip
            train_dirs, train_commands = {}, {}
            for dataset in datasets if training else ():
                name = "train" if dataset is None else f"train_{_short(dataset)}"
                train_dirs[dataset] = os.path.join(base, name)
                bindings = (*config.train_bindings, f"run_train.seed = {seed}")
                if dataset is not None:
                    bindings += (f"run_train.dataset = {dataset!r}",)
                train_commands[dataset] = _command(
                    "train", train_dirs[dataset], train_files, bindings, strategy,
                    (f"--genotype={search_dir}",),
                )  # fmt: skip
            runs.append(Run(point, seed, search_dir, search_command, train_dirs, train_commands))
    return runs


def write_plan(root_dir, config, runs):
    """``<root>/sweep.json``: the axes, points and runs (what the report reads)."""
    from ilnas_tf import run_dir

    os.makedirs(root_dir, exist_ok=True)
    document = {
        "grid": {k: list(v) for k, v in config.grid.items()},
        "variants": {k: list(v) for k, v in config.variants.items()},
        "seeds": list(config.seeds),
        "points": [dataclasses.asdict(p) for p in {r.point.name: r.point for r in runs}.values()],
        "runs": [
            {"point": r.point.name, "seed": r.seed, "search_dir": os.path.relpath(r.search_dir,
             root_dir), "train_dirs": {str(k): os.path.relpath(v, root_dir) for k, v in
             r.train_dirs.items()}, "command": r.shell_command()}
            for r in runs
        ],
    }  # fmt: skip
    run_dir.write_atomically(os.path.join(root_dir, PLAN_FILE), json.dumps(document, indent=2))
