"""The light install: the core dependencies only, no PyTorch, no TensorFlow, no JAX.

Each job runs `spa` in a fresh interpreter where importing a framework fails as it does where it
is not installed, so these tests hold in the full environment too; CI also runs them in a virtual
environment with the core install only (`.ci/run`), where they must not find torch at all.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from spa.extras import EXTRAS
from spa.obspa import GRADIENT_FREE_CLASSIFIER
from spa.oracle import max_relative_error
from spa.runtime import random_inputs, run
from tests.rules.graphs import Builder

# A fresh interpreter in which importing any extra's module fails like a missing package.
WITHOUT_EXTRAS = f"""
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(EXTRAS)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
"""


def spa_light(*args) -> subprocess.CompletedProcess:
    code = WITHOUT_EXTRAS + "from spa.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small residual CNN: stem, a residual block, a head."""
    b = Builder()
    x = b.input((1, 3, 16, 16))
    stem = b.op("Relu", [b.conv(x, 16, k=3, name="stem")])
    branch = b.conv(b.op("Relu", [b.conv(stem, 24, k=3, name="c1")]), 16, k=3, name="c2")
    trunk = b.op("Relu", [b.op("Add", [stem, branch])])
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [trunk])])
    logits = b.op("Gemm", [pooled, b.weight("fc.W", (10, 16)), b.weight("fc.B", (10,))], transB=1)
    b.output(logits)
    path = tmp_path_factory.mktemp("light") / "resnet.onnx"
    with open(path, "wb") as f:
        f.write(b.build().SerializeToString())
    return path


def test_import_and_help_need_no_framework():
    code = WITHOUT_EXTRAS + ("import spa, spa.cli\nspa.cli.build_parser()\n"
                             f"assert not any(m.split('.')[0] in {sorted(EXTRAS)!r} for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_erase_without_torch(model_path, tmp_path):
    """Erasing the residual block needs no framework either (importance from onnxruntime)."""
    out, report = tmp_path / "erased.onnx", tmp_path / "erase.json"
    result = spa_light("erase", model_path, "-o", out, "--blocks", "1", "--no-latency", "--report", report)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(report.read_text())["erased"]) == 1 and out.exists()


def test_analyze_prune_bench_without_torch(model_path, tmp_path):
    assert spa_light("analyze", model_path).returncode == 0
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = spa_light("prune", model_path, "-o", out, "--ratio", "0.5", "--round-to", "1", "--report", report)
    assert result.returncode == 0, result.stderr
    removed = json.loads(report.read_text())["removed"]
    assert removed
    assert max_relative_error(str(model_path), str(out), removed) < 1e-5
    result = spa_light("bench", model_path, out, "--runs", "3", "--warmup", "1")
    assert result.returncode == 0 and "speed-up" in result.stdout, result.stderr


def test_obspa_data_free_needs_no_framework(model_path, tmp_path):
    """OBSPA's activations come from onnxruntime and its math is numpy: data-free, with no PyTorch
    for the inversion, it says which inputs it made instead, and still compensates (measured on
    Gaussian inputs: 0.031 relative output error at ratio 0.3 from random-shape Hessians, 0.074 from
    pink noise, 0.037 from Gaussian noise, against 0.43 for L1's same-size prune)."""
    errors, stdout = {}, {}
    for criterion in ("obspa", "l1"):
        out = tmp_path / f"{criterion}.onnx"
        result = spa_light("prune", model_path, "-o", out, "--criterion", criterion, "--ratio", "0.3",
                           "--round-to", "1", "--no-latency")
        assert result.returncode == 0, result.stderr
        stdout[criterion] = result.stdout
        onnx.checker.check_model(str(out), full_check=True)
        original = onnx.load(model_path)
        feeds = random_inputs(original, batch=64, seed=1)
        want = run(original, feeds)[0]
        errors[criterion] = np.linalg.norm(run(str(out), feeds)[0] - want) / np.linalg.norm(want)
    assert ("data-free inversion needs gradients and PyTorch is not installed; "
            f"used {GRADIENT_FREE_CLASSIFIER} inputs") in stdout["obspa"]
    assert errors["obspa"] < 0.1 and errors["obspa"] < 0.3 * errors["l1"], errors


def test_inversion_asked_for_names_the_extra(model_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    result = spa_light("prune", model_path, "-o", out, "--criterion", "obspa", "--data-free", "inversion")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == "spa: error: this needs PyTorch, which is not installed (no module 'torch'): pip install 'spa[torch]'"
    assert not out.exists()


def test_a_gradient_criterion_names_the_extra(model_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    np.savez(tmp_path / "calib.npz", X=np.zeros((4, 3, 16, 16), np.float32))
    result = spa_light("prune", model_path, "-o", out, "--criterion", "taylor", "--pseudo-labels",
                       "--calib", tmp_path / "calib.npz")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("spa: error: this needs PyTorch, which is not installed") and line.endswith(
        "pip install 'spa[torch]'")
    assert not out.exists()


def test_export_names_the_extra(tmp_path):
    result = spa_light("export", "--framework", "tf", "--list")
    assert result.returncode == 2
    assert "pip install 'spa[tf]'" in result.stderr
