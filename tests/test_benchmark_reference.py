"""tools/benchmark_reference.py: the PyTorch DARTS reference (quark0/darts) harness.

The argument checks run everywhere. The rest needs a checkout of the reference's ``cnn``
folder named by ``ILNAS_DARTS_DIR`` and a python with PyTorch: the test python itself, or
the one ``ILNAS_TORCH_PYTHON`` names (the CI venv has no PyTorch, so there they skip):

  git clone https://github.com/quark0/darts /tmp/darts
  ILNAS_DARTS_DIR=/tmp/darts/cnn ILNAS_TORCH_PYTHON=/path/to/torch/python \
      python -m pytest tests/test_benchmark_reference.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark_reference.py")
DARTS_DIR = os.environ.get("ILNAS_DARTS_DIR")


def _tool():
    # Run as a script, the tool finds its sibling ``machine_info`` in its own directory.
    if os.path.dirname(TOOL) not in sys.path:
        sys.path.insert(0, os.path.dirname(TOOL))
    spec = importlib.util.spec_from_file_location("benchmark_reference", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_python():
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    return os.environ.get("ILNAS_TORCH_PYTHON")


TORCH_PYTHON = _torch_python()
needs_reference = pytest.mark.skipif(
    not (DARTS_DIR and os.path.isfile(os.path.join(DARTS_DIR, "model_search.py")))
    or not TORCH_PYTHON,
    reason="needs ILNAS_DARTS_DIR (quark0/darts cnn/) and PyTorch (or ILNAS_TORCH_PYTHON)",
)


def run(args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [TORCH_PYTHON, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--channels=3", "--channels=3: expected an even number"),
        ("--steps=0", "--steps=0: expected an integer >= 1"),
        ("--layers=0", "--layers=0: expected an integer >= 1"),
    ],
)
def test_bad_arguments_raise_one_clear_value_error(tmp_path, flag, message):
    tool = _tool()
    for name in tool.REFERENCE_FILES:
        (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=message):
        tool.parse_args([f"--darts_dir={tmp_path}", flag])


def test_a_folder_without_the_reference_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected the cnn folder of a quark0/darts checkout"):
        _tool().parse_args([f"--darts_dir={tmp_path}"])


@needs_reference
@pytest.mark.parametrize("order", ["first", "second"])
def test_tiny_iteration_reports_one_json_line(order):
    result = run(
        [TOOL, f"--darts_dir={DARTS_DIR}", "--channels=4", "--layers=3", "--batch=4"]
        + ["--image_size=8", f"--order={order}", "--steps=1", "--threads=1"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["order"] == order
    assert len(report["arch_step_all_s"]) == len(report["weight_step_all_s"]) == 1
    assert report["iteration_s"] > 0 and report["peak_rss_gib"] > 0
    assert math.isfinite(report["last_train_loss"])
    assert report["environment"]["torch_num_threads"] == 1
    assert report["arch_parameters"] == 2 * 14 * 8  # alphas_normal, alphas_reduce: 14 edges x 8
    # The same supernet as ilnas_tf's: equal weight counts.
    from ilnas_tf import learner, search_space

    ours = learner.Learner(
        search_space.SearchEncoder(4, 3), search_space.ClassifierHead(10), (8, 8, 3)
    )
    assert report["weights"] == ours.num_encoder_weights + ours.num_head_weights


# Runs in the PyTorch python: the reference's second-order architecture gradient (through
# the harness's patches) against the exact one from autograd through the unrolled SGD step
# w' = w - eta (momentum * buffer + grad_w L_train + wd * w), in float64.
GRADIENT_CHECK = r"""
import functools, importlib.util, json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))  # the tool's sibling machine_info
spec = importlib.util.spec_from_file_location("benchmark_reference", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
torch, model_search, architect, _ = tool.load_reference(sys.argv[2])
from torch.func import functional_call
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
model, criterion, optimizer, arch = tool.build(torch, model_search, architect, 4, 3)
gen = torch.Generator().manual_seed(0)
x_t, x_v = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
y_t = torch.randint(0, 10, (4,), generator=gen)
y_v = torch.randint(0, 10, (4,), generator=gen)
optimizer.zero_grad()
criterion(model(x_t), y_t).backward()
optimizer.step()  # momentum buffers now exist and enter the unrolled step
h = tool.HYPERPARAMETERS
eta, names_params = h["learning_rate"], list(model.named_parameters())
params = [p for _, p in names_params]
grads = torch.autograd.grad(criterion(model(x_t), y_t), params, create_graph=True)
unrolled = {
    name: w - eta * (h["momentum"] * optimizer.state[w]["momentum_buffer"] + g
                     + h["weight_decay"] * w)
    for (name, w), g in zip(names_params, grads)
}
val = criterion(functional_call(model, unrolled, (x_v,)), y_v)
exact = torch.autograd.grad(val, model.arch_parameters())
frozen = {name: w.detach() for name, w in unrolled.items()}
val = criterion(functional_call(model, frozen, (x_v,)), y_v)
direct = torch.autograd.grad(val, model.arch_parameters())
# The reference's finite-difference step r=1e-2 is far from the limit on this tiny net (ReLU /
# max-pool kinks); r=1e-6 in float64 is, so the comparison tests the computation itself.
arch._hessian_vector_product = functools.partial(
    type(arch)._hessian_vector_product, arch, r=1e-6)
for a in model.arch_parameters():
    a.grad = None
arch._backward_step_unrolled(x_t, y_t, x_v, y_v, eta, optimizer)
flat = lambda ts: torch.cat([t.flatten() for t in ts])
exact, direct = flat(exact), flat(direct)
ref = flat([a.grad for a in model.arch_parameters()])
print(json.dumps({"error": (ref - exact).norm().item(), "exact": exact.norm().item(),
                  "implicit": (exact - direct).norm().item()}))
"""


@needs_reference
def test_second_order_gradient_matches_autograd_through_the_unrolled_step():
    result = run(["-c", GRADIENT_CHECK, TOOL, DARTS_DIR])
    assert result.returncode == 0, result.stderr[-3000:]
    norms = json.loads(result.stdout.strip().splitlines()[-1])
    # The second-order term is not negligible, so the check would see it missing.
    assert norms["implicit"] > 1e-2 * norms["exact"], norms
    # Central differences at r=1e-6 in float64: truncation O(r^2), rounding O(1e-16 / r).
    assert norms["error"] < 1e-6 * norms["exact"], norms
