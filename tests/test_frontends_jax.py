"""The Flax nnx zoo exports through jax2onnx and runs in onnxruntime like the Flax model."""
from __future__ import annotations

import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from frontends.jax import export_flax, export_jax_function  # noqa: E402
from models_zoo.flax_models import FLAX_ZOO  # noqa: E402

RTOL = 1e-4   # of the output scale: max|a - b| <= RTOL * max|a| + ATOL
ATOL = 1e-5
OTHER_BATCH = 3


def _assert_close(actual, expected):
    assert actual.shape == expected.shape
    error = float(np.abs(actual - expected).max())
    assert error <= RTOL * float(np.abs(expected).max()) + ATOL, f"max abs error {error}"


def _random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _flax_output(model, x):
    # One compiled call instead of one compiled kernel per op and shape (eager mode).
    return np.asarray(nnx.jit(lambda module, inputs: module(inputs))(model, x))


def _run(path, *inputs):
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))[0]


@pytest.mark.parametrize("name", list(FLAX_ZOO))
def test_zoo_export_matches_flax(name, tmp_path):
    entry = FLAX_ZOO[name]
    model = entry.build()
    path = export_flax(model, tmp_path / f"{name}.onnx", entry.input_shape)

    proto = onnx.load(path)
    # full_check re-infers every shape strictly: jax2onnx's own value_info fails it.
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    for batch in (entry.input_shape[0], OTHER_BATCH):
        x = _random_input((batch, *entry.input_shape[1:]), seed=batch)
        _assert_close(_run(path, x), _flax_output(model, x))


class _TrainableBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)  # training mode: batch statistics
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.bn(self.conv(x))).mean(axis=(1, 2))


def test_flax_export_is_in_inference_mode_and_leaves_the_module_alone(tmp_path):
    module = _TrainableBlock(nnx.Rngs(0))
    path = export_flax(module, tmp_path / "model.onnx", (2, 8, 8, 3), dynamic_batch=False)

    assert module.bn.use_running_average is False and module.dropout.deterministic is False
    module.eval()
    x = _random_input((2, 8, 8, 3))
    _assert_close(_run(path, x), _flax_output(module, x))
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 8, 8, 3]


def test_jax_function_with_closed_over_parameters(tmp_path):
    rng = np.random.default_rng(0)
    kernel = jax.numpy.asarray(rng.standard_normal((3, 3, 3, 8)), jax.numpy.float32)
    weight = jax.numpy.asarray(rng.standard_normal((8, 4)), jax.numpy.float32)

    def fn(image, offset):
        features = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(features).mean(axis=(1, 2)) @ weight + offset

    path = export_jax_function(fn, tmp_path / "fn.onnx", [(2, 8, 8, 3), (2, 4)], output_names=["logits"])
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.ir_version <= 13  # onnxruntime 1.31's limit
    image, offset = _random_input((OTHER_BATCH, 8, 8, 3)), _random_input((OTHER_BATCH, 4), seed=1)
    _assert_close(_run(path, image, offset), np.asarray(fn(image, offset)))


def test_missing_jax_is_a_clear_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # makes `import jax2onnx` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[jax\]'"):
        export_jax_function(lambda x: x, tmp_path / "fn.onnx", [(1, 2)])


def test_a_jnp_mean_exports_to_a_valid_model_that_prunes(tmp_path):
    """jax2onnx writes jnp.mean's ReduceMean with its axes as an input, valid from opset 18 on:
    the default opset is 18, so such a model loads, runs and prunes exactly."""
    import jax.numpy as jnp

    import spa
    from spa.oracle import max_relative_error

    class MeanPooled(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
            self.head = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))

    module = MeanPooled(nnx.Rngs(0))
    path = export_flax(module, tmp_path / "mean.onnx", input_shape=(1, 8, 8, 1))
    x = _random_input((OTHER_BATCH, 8, 8, 1))
    _assert_close(ort.InferenceSession(path).run(None, {"input": x})[0], np.asarray(module(x)))
    pruned, report = spa.prune(path, ratio=0.5, round_to=1)
    assert report.groups_pruned == 1
    assert max_relative_error(path, pruned, report.removed) < 1e-5
