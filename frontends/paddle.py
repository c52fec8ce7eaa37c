"""PaddlePaddle front end: export a ``paddle.nn.Layer`` to ONNX with paddle2onnx.

The layer is saved as a Paddle inference model (``paddle.jit.save``) in a temporary folder, which
paddle2onnx then converts. The exported graph takes NCHW float32 input named ``input`` with a
symbolic batch dim; paddle2onnx names the output ``fetch_name_0``.

Importing this module does not import Paddle.
"""
from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence
from typing import Any

__all__ = ["export_paddle"]

_MISSING = "PaddlePaddle support needs the 'paddle' extra: pip install 'spa[paddle]'"


def export_paddle(layer: Any, path: str | os.PathLike, input_shape: Sequence[int], opset: int = 17) -> str:
    """Export a single-input ``paddle.nn.Layer`` (run in eval mode) to ``path``, written atomically.

    ``input_shape`` includes the batch dim, e.g. ``(2, 3, 32, 32)``; the batch dim is exported
    symbolic. Returns ``path`` as a ``str``.
    """
    try:
        import paddle
        import paddle2onnx
    except ImportError as error:
        raise ImportError(_MISSING) from error
    import onnx

    from spa.io import save_model

    layer.eval()
    spec = paddle.static.InputSpec([None, *input_shape[1:]], "float32", "input")
    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "model")
        paddle.jit.save(layer, prefix, input_spec=[spec])
        # Paddle 3 writes the program as model.json (PIR); older releases as model.pdmodel.
        [program] = glob.glob(prefix + ".json") or glob.glob(prefix + ".pdmodel")
        converted = os.path.join(folder, "model.onnx")
        paddle2onnx.export(program, prefix + ".pdiparams", converted, opset_version=opset)
        proto = onnx.load(converted)
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_model(proto, path)
