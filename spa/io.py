"""Writing models safely: never over the input, atomically, external data for large models."""
from __future__ import annotations

import os
import tempfile

import onnx

from .errors import SpaError
from .protos import SERIALIZABLE_BYTES, model_bytes



def check_output_path(output, protected=()) -> str:
    """The absolute output path; SpaError if it would overwrite an input or cannot be written."""
    output = os.path.abspath(os.fspath(output))
    for path in protected:
        if path and os.path.abspath(os.fspath(path)) == output or (
            path and os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output)
        ):
            raise SpaError(f"refusing to write over the input model {path}: choose another output path")
    folder = os.path.dirname(output)
    if not os.path.isdir(folder):
        raise SpaError(f"the output folder {folder} does not exist")
    if os.path.isdir(output):
        raise SpaError(f"the output path {output} is a directory")
    return output


def save_model(model: onnx.ModelProto, output, protected=()) -> str:
    """Write `model` to `output` through a temporary file and a rename: a failure leaves nothing."""
    output = check_output_path(output, protected)
    folder, base = os.path.split(output)
    external = model_bytes(model) > SERIALIZABLE_BYTES
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    os.close(fd)
    data_name = base + ".data"
    tmp_data = os.path.join(folder, f".{data_name}.tmp")
    try:
        if external:
            data_path = os.path.join(folder, data_name)
            for path in protected:
                if path and os.path.exists(data_path) and _references(path, data_name):
                    raise SpaError(f"refusing to overwrite {data_path}, which the input model uses")
            onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=os.path.basename(tmp_data), size_threshold=1024)
            # onnx.save moved the weights out of `model`: bring them back, the caller still holds it
            onnx.external_data_helper.load_external_data_for_model(model, folder)
            _relocate(tmp, data_name)
            os.replace(tmp_data, data_path)
        else:
            onnx.save(model, tmp)
        os.replace(tmp, output)
    except BaseException:
        for path in (tmp, tmp_data):
            if os.path.exists(path):
                os.remove(path)
        raise
    return output


def _relocate(model_path: str, data_name: str):
    """Point a saved model's external tensors at their final data file name."""
    model = onnx.load(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save(model, model_path)


def _references(model_path: str, data_name: str) -> bool:
    model = onnx.load(os.fspath(model_path), load_external_data=False)
    return any(e.key == "location" and e.value == data_name for t in model.graph.initializer for e in t.external_data)
