"""The Paddle zoo exports through paddle2onnx, runs in onnxruntime like Paddle, prunes with the
zeroing oracle holding, and converts to PyTorch."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

# Paddle 3.3 segfaults in a process that has run TensorFlow (on import, or on export when imported
# first): run this file on its own, e.g. `python -m pytest tests/test_frontends_paddle.py`.
if "tensorflow" in sys.modules:
    pytest.skip("Paddle cannot run in a process that imported TensorFlow", allow_module_level=True)
paddle = pytest.importorskip("paddle")
pytest.importorskip("paddle2onnx")

import spa  # noqa: E402
from frontends.paddle import export_paddle  # noqa: E402
from models_zoo.paddle_models import PADDLE_ZOO  # noqa: E402
from spa.cli import main  # noqa: E402
from spa.oracle import max_relative_error  # noqa: E402
from spa.runtime import run  # noqa: E402
from tests.test_frameworks import _close, _torch_outputs  # noqa: E402

OTHER_BATCH = 3


def _random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module", params=list(PADDLE_ZOO))
def exported(request, tmp_path_factory):
    """(layer, input shape, .onnx path) for each zoo model, exported once."""
    entry = PADDLE_ZOO[request.param]
    layer = entry.build()
    path = export_paddle(layer, tmp_path_factory.mktemp("paddle") / f"{request.param}.onnx", entry.input_shape)
    return layer, entry.input_shape, path


def test_export_matches_paddle(exported):
    layer, shape, path = exported
    assert [i.name for i in onnx.load(path).graph.input] == ["input"]
    for batch in (shape[0], OTHER_BATCH):
        x = _random_input((batch, *shape[1:]), seed=batch)
        _close(run(path, {"input": x}), [layer(paddle.to_tensor(x)).numpy()])


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_prunes_with_the_zeroing_oracle(exported, ratio):
    _, _, path = exported
    pruned, report = spa.prune(path, ratio=ratio)
    assert report.groups_pruned and report.params_after < (1 - ratio / 2) * report.params_before
    assert max_relative_error(path, pruned, report.removed) < 1e-4


def test_to_torch_matches_onnxruntime(exported):
    pytest.importorskip("onnx2torch")
    _, shape, path = exported
    pruned, _ = spa.prune(path, ratio=0.5)
    for model in (onnx.load(path), pruned):
        feeds = {"input": _random_input(shape)}
        _close(_torch_outputs(spa.to_torch(model), feeds), run(model, feeds))


def test_cli_exports_and_lists_paddle(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["export", "--framework", "paddle", "--model", "pp_lcnet", "-o", str(out)]) == 0
    onnx.checker.check_model(onnx.load(out))
    assert main(["export", "--list"]) == 0
    assert "paddle" in capsys.readouterr().out
