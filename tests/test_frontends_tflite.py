"""TFLite files written here from a Keras model convert through tf2onnx, run in onnxruntime like
TensorFlow Lite's interpreter, and prune with the zeroing oracle holding."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import spa  # noqa: E402
from frontends.tensorflow import export_tflite  # noqa: E402
from spa.cli import main  # noqa: E402
from spa.oracle import max_relative_error  # noqa: E402
from tests.test_frontends_tf import _assert_close, _onnx_output, _random_input  # noqa: E402

# TFLite's hybrid kernels quantize the activations of a dynamic-range model on the fly; the ONNX
# model keeps them float, so the two differ by about one quantization step (measured: 1.6e-3).
INT8_RTOL = 1e-2


@pytest.fixture(scope="module", params=["float32", "int8_weights"])
def tflite(request, tmp_path_factory):
    """(kind, .tflite path) for the Keras zoo ResNet, as float32 and with dynamic-range int8 weights."""
    from models_zoo.keras_models import KERAS_ZOO

    converter = tf.lite.TFLiteConverter.from_keras_model(KERAS_ZOO["resnet"].build())
    if request.param == "int8_weights":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path = tmp_path_factory.mktemp("tflite") / f"{request.param}.tflite"
    path.write_bytes(converter.convert())
    return request.param, path


def _interpreter_output(path, x):
    interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)  # the file's batch dim is 1
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_export_matches_the_tflite_interpreter(tflite, tmp_path):
    kind, source = tflite
    path = export_tflite(source, tmp_path / "model.onnx")
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    int8_weights = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert bool(int8_weights) == (kind == "int8_weights")  # the int8 weights stay int8
    x = _random_input((2, 32, 32, 3))
    got, want = _onnx_output(path, x), _interpreter_output(source, x)
    if kind == "float32":
        _assert_close(got, want)
    else:
        assert np.abs(got - want).max() <= INT8_RTOL * np.abs(want).max()


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_prunes_with_the_zeroing_oracle(tflite, ratio, tmp_path):
    _, source = tflite
    path = export_tflite(source, tmp_path / "model.onnx")
    pruned, report = spa.prune(path, ratio=ratio)
    assert report.groups_pruned and report.params_after < (1 - ratio / 2) * report.params_before
    assert max_relative_error(path, pruned, report.removed) < 1e-4


def test_cli_converts_and_lists_tflite(tflite, tmp_path, capsys):
    _, source = tflite
    out = tmp_path / "out.onnx"
    assert main(["export", "--framework", "tflite", "--tflite", str(source), "-o", str(out)]) == 0
    onnx.checker.check_model(onnx.load(out))
    assert main(["export", "--list"]) == 0
    assert "tflite" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ([], "give it with --tflite MODEL.tflite"),
    (["--tflite", "missing.tflite"], "no TFLite file at"),
    (["--tflite", "garbage.tflite"], "tf2onnx could not convert"),
])
def test_cli_bad_tflite_is_one_line_and_writes_nothing(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.tflite").write_bytes(b"not a flatbuffer" * 8)
    assert main(["export", "--framework", "tflite", *args, "-o", "out.onnx"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("spa: error: ") and message in line
    assert not (tmp_path / "out.onnx").exists()
