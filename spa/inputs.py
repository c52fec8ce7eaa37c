"""The sizes SPA runs a model at: the user's, or sizes that work, found by trying.

Every place SPA runs a model (the check that it runs, the final check of a prune, latency,
synthetic data) feeds inputs of these shapes. A model with a symbolic image size
(`[batch, 3, height, width]`) often runs only at some sizes: a detector whose feature maps are
concatenated after upsampling needs multiples of its total stride, a recognizer needs a width its
pooling does not collapse. So symbolic sizes other than the batch are tried from a short list of
usual ones, the smallest first, until onnxruntime runs the model; `--input-shape` says it instead.
The batch (a symbolic axis 0) is set separately by whoever makes the feeds.
"""
from __future__ import annotations

import onnx

from .errors import SpaError

# Tried in turn for symbolic sizes: multiples of 32 first for images (a detector's total stride).
_IMAGE_SIZES = (64, 128, 256, 320, 640, 32)
_OTHER_SIZES = (16, 32, 64, 128, 8, 4)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'NAME=1,3,320,320' -> ('NAME', (1, 3, 320, 320)), for --input-shape."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 1 for d in shape):
        raise SpaError(f"--input-shape {text}: expected NAME=D1,D2,... with positive sizes, e.g. images=1,3,320,320")
    return name, shape


def declared(model: onnx.ModelProto) -> dict[str, list]:
    """Each input the caller feeds, with its declared dims: an int, a symbol's name, or None."""
    initializers = {t.name for t in model.graph.initializer}
    return {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                      for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input if vi.name not in initializers}


def batch_symbols(inputs: dict[str, list]) -> set[str]:
    """The symbols that size some input's axis 0: the batch, wherever else it appears (the batch
    axis of a recurrent state)."""
    return {dims[0] for dims in inputs.values() if dims and isinstance(dims[0], str)}


def choose_shapes(model: onnx.ModelProto, given: dict | None = None) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """A concrete shape for every input (a symbolic batch is 1), and a one-line note saying which
    sizes were picked when SPA had to pick them. SpaError if the given shapes do not fit the model
    or no size tried runs it."""
    inputs = declared(model)
    given = dict(given or {})
    for name, shape in given.items():
        if name not in inputs:
            raise SpaError(f"--input-shape {name}: the model has no input of that name (inputs: {', '.join(inputs)})")
        dims = inputs[name]
        if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
            raise SpaError(f"--input-shape {name}={','.join(map(str, shape))} does not fit the input's declared shape "
                           f"({', '.join(str(d) if isinstance(d, int) else '?' for d in dims)})")
    if not any(_open(inputs, name, axis) for name in inputs if name not in given for axis in range(len(inputs[name]))):
        return _attempt(inputs, given, 0), None
    from .runtime import quiet, random_inputs, session

    sess = session(model)
    failure = ""
    for k in range(len(_IMAGE_SIZES)):
        shapes = _attempt(inputs, given, k)
        try:
            sess.run(None, random_inputs(model, batch=1, shapes=shapes), quiet())
        except Exception as e:  # onnxruntime's own exception types
            failure = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            continue
        picked = ", ".join(f"{n}={','.join(map(str, s))}" for n, s in shapes.items()
                           if n not in given and any(_open(inputs, n, a) for a in range(len(s))))
        return shapes, f"ran the model with input sizes {picked} (choose them with --input-shape)"
    raise SpaError(f"onnxruntime cannot run the model at any input size tried ({failure}); "
                   "give the sizes with --input-shape NAME=D1,D2,...")


def _open(inputs: dict[str, list], name: str, axis: int) -> bool:
    """Whether SPA must pick this size: symbolic, and not the batch."""
    dim = inputs[name][axis]
    return not isinstance(dim, int) and axis > 0 and dim not in batch_symbols(inputs)


def _attempt(inputs: dict[str, list], given: dict, k: int) -> dict[str, tuple[int, ...]]:
    """The k-th guess: the batch is 1, and each other symbolic size takes the k-th usual size for
    its kind of axis; axes that share a symbol share their size (the user's, where given)."""
    batch = batch_symbols(inputs)
    sizes: dict[str, int] = {}
    for name, shape in given.items():
        sizes.update({d: s for d, s in zip(inputs[name], shape) if isinstance(d, str)})
    shapes = {}
    for name, dims in inputs.items():
        if name in given:
            shapes[name] = tuple(given[name])
            continue
        spatial = _spatial_axes(dims)
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
            elif d in sizes:
                shape.append(sizes[d])
            else:
                size = 1 if axis == 0 or d in batch else (_IMAGE_SIZES if axis in spatial else _OTHER_SIZES)[k]
                if d is not None:
                    sizes[d] = size
                shape.append(size)
        shapes[name] = tuple(shape)
    return shapes


def _spatial_axes(dims: list) -> set[int]:
    """The height and width axes of an image input: NCHW or NHWC with 1, 3 or 4 channels."""
    if len(dims) != 4:
        return set()
    return {1, 2} if dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) else {2, 3}
