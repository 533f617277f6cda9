"""Benchmark of one search iteration of the PyTorch DARTS reference (quark0/darts, ``cnn/``).

The counterpart of ``tools/benchmark_search.py`` for the reference implementation of DARTS
(Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search", ICLR 2019). It imports
``model_search.Network`` and ``architect.Architect`` from a checkout of the reference's ``cnn``
folder (nothing of the reference is copied into this repository), builds the search supernet
with the hyperparameters of the reference's ``train_search.py`` (SGD lr 0.025, momentum 0.9,
weight decay 3e-4, gradient clipping 5; architecture Adam lr 3e-4, betas (0.5, 0.999), weight
decay 1e-3) on random data, and times the loop body of ``train_search.py``'s ``train``:

  architect.step(input, target, input_search, target_search, lr, optimizer, unrolled)
  optimizer.zero_grad(); loss = criterion(model(input), target); loss.backward()
  clip_grad_norm_(model.parameters(), 5); optimizer.step()

with ``unrolled = (--order == second)``. It prints one JSON line: setup and first-iteration
seconds, the median architecture step, weight step and iteration (their sum, as in
``benchmark_search.py``) over ``--steps`` iterations after the first, every per-step time,
process CPU seconds, peak RSS and an ``environment`` object (versions, PyTorch's thread
pools, CPU model and usable cores, thread variables, load average before and after, the
reference checkout's commit and a hash of its files).

Get the reference (2018 code; the harness makes it run on a CPU-only PyTorch 2.x, see
``cpu_patches``) and run, with a python that has PyTorch:

  git clone https://github.com/quark0/darts /tmp/darts
  python tools/benchmark_reference.py --darts_dir=/tmp/darts/cnn --channels=8 --layers=5 \
      --batch=16 --order=second --steps=5
"""

from __future__ import annotations

import time

START = time.time()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import machine_info  # noqa: E402 (tools/, the script's directory)

LOAD_BEFORE = os.getloadavg()

# The reference's train_search.py defaults.
HYPERPARAMETERS = {
    "learning_rate": 0.025,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "arch_learning_rate": 3e-4,
    "arch_weight_decay": 1e-3,
    "seed": 2,
}
NUM_CLASSES = 10
# The reference modules the harness imports (directly or through model_search).
REFERENCE_FILES = ("model_search.py", "architect.py", "operations.py", "genotypes.py")
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "PYTHONPATH",
)
_PATCHES = []


def parse_args(argv=None):
    """Parses and checks the command line; raises ValueError on a bad value."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--darts_dir", required=True, help="A checkout of quark0/darts's cnn/.")
    parser.add_argument("--channels", type=int, default=8, help="Initial channels C.")
    parser.add_argument("--layers", type=int, default=5, help="Search cells.")
    parser.add_argument("--batch", type=int, default=16, help="Batch size (train and search).")
    parser.add_argument("--image_size", type=int, default=32, help="Image height/width.")
    parser.add_argument("--order", choices=("first", "second"), default="second")
    parser.add_argument("--steps", type=int, default=5, help="Timed iterations after the first.")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: keep).")
    args = parser.parse_args(argv)
    for name, minimum in (("channels", 2), ("layers", 1), ("batch", 1), ("steps", 1)):
        if getattr(args, name) < minimum:
            raise ValueError(f"--{name}={getattr(args, name)}: expected an integer >= {minimum}")
    if args.channels % 2:
        raise ValueError(
            f"--channels={args.channels}: expected an even number (the reference's "
            "FactorizedReduce halves the channels)"
        )
    if args.image_size < 4:
        raise ValueError(f"--image_size={args.image_size}: expected an integer >= 4")
    if args.threads < 0:
        raise ValueError(f"--threads={args.threads}: expected 0 (PyTorch's default) or more")
    check_darts_dir(args.darts_dir)
    return args


def check_darts_dir(darts_dir):
    """Raises ValueError unless ``darts_dir`` holds the reference modules."""
    missing = [f for f in REFERENCE_FILES if not os.path.isfile(os.path.join(darts_dir, f))]
    if missing:
        raise ValueError(
            f"--darts_dir={darts_dir!r}: expected the cnn folder of a quark0/darts checkout "
            f"(git clone https://github.com/quark0/darts; use DIR/cnn), missing {missing}"
        )


def cpu_patches(torch):
    """Makes the 2018 reference run on a CPU-only PyTorch 2.x; returns what it patched.

    The reference calls ``.cuda()`` on tensors (``Network._initialize_alphas``) and modules
    (``Network.new``, ``Architect._construct_model_from_theta``, every second-order step). On
    a CPU-only build these raise; the harness makes both the identity, which is what they are
    on the reference's own setting, where everything already lives on the one GPU. Nothing
    else the imported modules use needs a patch: ``torch.autograd.Variable(t,
    requires_grad=True)`` still returns a new leaf tensor, and the deprecated ``add_(alpha,
    other)`` / ``sub(alpha, other)`` overloads of ``architect.py`` still compute ``self +/-
    alpha * other`` (their deprecation warning is silenced). ``volatile``, ``.data[0]`` and
    the ``torch.cuda`` / ``cudnn`` calls live in ``train_search.py``, which is not imported.
    """
    if not _PATCHES:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
        warnings.filterwarnings("ignore", message=r"This overload of (add|sub)_? is deprecated")
        _PATCHES.extend(
            [
                "torch.Tensor.cuda -> identity",
                "torch.nn.Module.cuda -> identity",
                "silenced: deprecated add_/sub overload warnings",
            ]
        )
    return list(_PATCHES)


def load_reference(darts_dir):
    """Imports the reference's ``model_search`` and ``architect`` from ``darts_dir``.

    Returns:
      (torch, model_search, architect, patches).
    """
    check_darts_dir(darts_dir)
    import torch

    patches = cpu_patches(torch)
    darts_dir = os.path.abspath(darts_dir)
    if darts_dir not in sys.path:
        sys.path.insert(0, darts_dir)
    import architect
    import model_search

    for module in (architect, model_search):
        if os.path.dirname(os.path.abspath(module.__file__)) != darts_dir:
            raise ValueError(f"--darts_dir={darts_dir!r}: imported {module.__file__} instead")
    return torch, model_search, architect, patches


def build(torch, model_search, architect, channels, layers, seed=HYPERPARAMETERS["seed"]):
    """The supernet, its weight optimizer and the architect, as ``train_search.py`` builds them."""
    torch.manual_seed(seed)
    criterion = torch.nn.CrossEntropyLoss()
    model = model_search.Network(channels, NUM_CLASSES, layers, criterion)
    optimizer = torch.optim.SGD(
        model.parameters(),
        HYPERPARAMETERS["learning_rate"],
        momentum=HYPERPARAMETERS["momentum"],
        weight_decay=HYPERPARAMETERS["weight_decay"],
    )
    arch = architect.Architect(model, types.SimpleNamespace(**HYPERPARAMETERS))
    return model, criterion, optimizer, arch


def reference_commit(darts_dir):
    """The commit of the git checkout holding ``darts_dir`` (+dirty), None for an export."""

    def git(*args):
        return subprocess.run(["git", "-C", darts_dir, *args], capture_output=True, text=True)

    try:
        # Only a checkout that tracks the reference files, not a repository around an export.
        tracked = git("ls-files", "--error-unmatch", *REFERENCE_FILES)
        if tracked.returncode:
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def reference_sha256(darts_dir):
    """SHA-256 over the imported reference files: identifies an export without git."""
    digest = hashlib.sha256()
    for name in REFERENCE_FILES:
        with open(os.path.join(darts_dir, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()


def environment(torch, darts_dir):
    """What the benchmark ran on (see the module docstring)."""
    import numpy

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "host": platform.node(),
        "cpu": machine_info.cpu_model(),
        "cpus_usable": len(affinity) if affinity is not None else None,
        "cpus_total": os.cpu_count(),
        "cgroup_cpu_max": machine_info.read_text("/sys/fs/cgroup/cpu.max"),
        "variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "load_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "darts_dir": os.path.abspath(darts_dir),
        "reference_commit": reference_commit(darts_dir),
        "reference_sha256": reference_sha256(darts_dir),
    }


def main(argv=None):
    args = parse_args(argv)
    torch, model_search, architect, patches = load_reference(args.darts_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, criterion, optimizer, arch = build(
        torch, model_search, architect, args.channels, args.layers
    )
    shape = (args.batch, 3, args.image_size, args.image_size)
    x_train, x_search = torch.randn(shape), torch.randn(shape)
    y_train = torch.randint(0, NUM_CLASSES, (args.batch,))
    y_search = torch.randint(0, NUM_CLASSES, (args.batch,))
    lr = HYPERPARAMETERS["learning_rate"]  # epoch 0 of the cosine schedule
    unrolled = args.order == "second"

    def arch_step():
        model.train()
        arch.step(x_train, y_train, x_search, y_search, lr, optimizer, unrolled=unrolled)

    def weight_step():
        optimizer.zero_grad()
        loss = criterion(model(x_train), y_train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HYPERPARAMETERS["grad_clip"])
        optimizer.step()
        return loss.item()

    def timed(step):
        tick, cpu = time.perf_counter(), time.process_time()
        value = step()
        return time.perf_counter() - tick, time.process_time() - cpu, value

    built = time.time()
    arch_first, _, _ = timed(arch_step)
    weight_first, _, _ = timed(weight_step)
    first_iteration_end, first_iteration_cpu = time.time(), time.process_time()
    arch_times, weight_times, arch_cpu, weight_cpu = [], [], [], []
    loss = None
    for _ in range(args.steps):
        seconds, cpu, _ = timed(arch_step)
        arch_times.append(seconds)
        arch_cpu.append(cpu)
        seconds, cpu, loss = timed(weight_step)
        weight_times.append(seconds)
        weight_cpu.append(cpu)
    arch_s, weight_s = statistics.median(arch_times), statistics.median(weight_times)
    result = {
        "implementation": "quark0/darts (PyTorch)",
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image_size": args.image_size,
        "order": args.order,
        "steps": args.steps,
        "weights": sum(p.numel() for p in model.parameters()),
        "arch_parameters": sum(a.numel() for a in model.arch_parameters()),
        "setup_s": round(built - START, 1),
        "arch_first_call_s": round(arch_first, 3),
        "weight_first_call_s": round(weight_first, 3),
        "first_iteration_s": round(arch_first + weight_first, 3),
        # Same definition as benchmark_search.py's compile_s: process start to the end of
        # the first iteration (PyTorch runs eagerly: nothing is compiled).
        "compile_s": round(first_iteration_end - START, 1),
        "arch_step_s": round(arch_s, 3),
        "weight_step_s": round(weight_s, 3),
        "iteration_s": round(arch_s + weight_s, 3),
        # CPU seconds of all threads: less sensitive than wall time to other jobs' load.
        "compile_cpu_s": round(first_iteration_cpu, 1),
        "iteration_cpu_s": round(statistics.median(arch_cpu) + statistics.median(weight_cpu), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "arch_step_all_s": [round(t, 3) for t in arch_times],
        "weight_step_all_s": [round(t, 3) for t in weight_times],
        "last_train_loss": round(loss, 4),
        "hyperparameters": HYPERPARAMETERS,
        "reference_patches": patches,
        "environment": environment(torch, args.darts_dir),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
