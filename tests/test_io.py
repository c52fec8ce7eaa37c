"""Models with external data load, prune and check; outputs are written whole and self-contained."""
from __future__ import annotations

import os
import shutil

import onnx

import spa
from spa.oracle import max_relative_error


def external_copy(path, folder):
    """The model saved with its weights in a separate data file, as large exports are."""
    model = onnx.load(path)
    target = os.path.join(folder, "model.onnx")
    onnx.save(model, target, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    return target


def test_external_data_model_prunes_exactly(exports, tmp_path):
    path = external_copy(exports.get("resnet_basic", "dynamo"), tmp_path)
    data = (tmp_path / "weights.bin").read_bytes()
    pruned, report = spa.prune(path, ratio=0.5)
    assert max_relative_error(path, pruned, report.removed) < 1e-4
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in pruned.graph.initializer)
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    spa.save(pruned, out, protected=[path])
    assert sorted(os.listdir(out.parent)) == ["pruned.onnx"]
    assert (tmp_path / "weights.bin").read_bytes() == data  # the input's data file is untouched


def test_external_data_outside_the_model_folder_is_refused(exports, tmp_path):
    path = external_copy(exports.get("conv_chain", "dynamo"), tmp_path)
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    evil = tmp_path / "evil.onnx"
    onnx.save(model, evil)
    try:
        spa.prune(evil, ratio=0.5)
    except spa.SpaError as e:
        assert "outside" in str(e)
    else:
        raise AssertionError("an external data path outside the model's folder was followed")


def test_missing_external_data_is_a_clear_error(exports, tmp_path):
    path = external_copy(exports.get("conv_chain", "dynamo"), tmp_path)
    os.remove(tmp_path / "weights.bin")
    try:
        spa.prune(path, ratio=0.5)
    except spa.SpaError as e:
        assert "weights.bin" in str(e)
    else:
        raise AssertionError("pruned a model whose weights are missing")


def test_model_proto_input_prunes(exports):
    model = onnx.load(exports.get("mobilenet_v2", "torchscript"))
    pruned, report = spa.prune(model, ratio=0.3)
    assert report.params_after < report.params_before
    assert max_relative_error(model, pruned, report.removed) < 1e-4


def test_save_refuses_the_input_and_leaves_no_temporary(exports, tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(exports.get("conv_chain", "dynamo"), src)
    pruned, _ = spa.prune(str(src), ratio=0.5)
    try:
        spa.save(pruned, src, protected=[src])
    except spa.SpaError:
        pass
    else:
        raise AssertionError("wrote over the input")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
