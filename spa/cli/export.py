"""`spa export`: write a zoo model of one of the frontends' frameworks to ONNX."""
from __future__ import annotations

from ..errors import SpaError
from ..extras import missing
from .common import table


def zoo_frameworks() -> dict:
    """framework -> (zoo registry loader, zoo exporter), imported only when asked for."""
    def torch_zoo():
        from models_zoo.torch_models import TORCH_ZOO, TORCH_ZOO_LARGE
        from models_zoo.transformer_models import TRANSFORMER_ZOO

        return {**TORCH_ZOO, **TORCH_ZOO_LARGE, **TRANSFORMER_ZOO}

    def torch_export(name, output, args):
        from frontends.torch import export_zoo
        from models_zoo.transformer_models import TRANSFORMER_ZOO, export_transformer

        if name in TRANSFORMER_ZOO:
            try:
                return export_transformer(name, output, exporter=args.exporter, training=args.training)
            except ValueError as e:  # an exporter that does not work for this model
                raise SpaError(str(e)) from None
        return export_zoo(name, output, exporter=args.exporter, training=args.training)

    def keras_zoo():
        from models_zoo.keras_models import KERAS_ZOO

        return KERAS_ZOO

    def keras_export(name, output, args):
        from frontends.tensorflow import export_keras

        entry = keras_zoo()[name]
        return export_keras(entry.build(), output, input_shape=entry.input_shape)

    def flax_zoo():
        from models_zoo.flax_models import FLAX_ZOO

        return FLAX_ZOO

    def flax_export(name, output, args):
        from frontends.jax import export_flax

        entry = flax_zoo()[name]
        return export_flax(entry.build(), output, input_shape=entry.input_shape)

    def paddle_zoo():
        from models_zoo.paddle_models import PADDLE_ZOO

        return PADDLE_ZOO

    def paddle_export(name, output, args):
        from frontends.paddle import export_paddle

        entry = paddle_zoo()[name]
        return export_paddle(entry.build(), output, input_shape=entry.input_shape)

    return {"torch": (torch_zoo, torch_export), "tf": (keras_zoo, keras_export), "jax": (flax_zoo, flax_export),
            "paddle": (paddle_zoo, paddle_export)}


# framework -> (what it exports, the extra it needs), for `spa export --list`.
FRAMEWORKS = {
    "torch": ("zoo models (--model)", "torch"),
    "tf": ("Keras zoo models (--model)", "tf"),
    "jax": ("Flax zoo models (--model)", "jax"),
    "paddle": ("PaddlePaddle zoo models (--model)", "paddle"),
    "tflite": ("a TFLite file (--tflite MODEL.tflite)", "tf"),
}


def cmd_export(args) -> int:
    from ..io import check_output_path

    if args.list and args.framework is None:
        print(table([[name, what, f"spa[{extra}]"] for name, (what, extra) in FRAMEWORKS.items()],
                    ["framework", "exports", "extra"]))
        return 0
    framework = args.framework or "torch"
    if args.tflite and framework != "tflite":
        raise SpaError("--tflite goes with --framework tflite")
    if framework == "tflite":
        return _export_tflite(args)
    frameworks = zoo_frameworks()
    if framework not in frameworks:
        raise SpaError(f"unknown framework '{framework}' (choose from {', '.join(FRAMEWORKS)})")
    load_zoo, export = frameworks[framework]
    try:
        zoo = load_zoo()
    except ImportError as e:
        raise SpaError(missing(e) or str(e)) from None
    if args.list or not args.model:
        print(table([[n, getattr(e, "description", "")] for n, e in zoo.items()], ["model", "description"]))
        return 0
    if args.model not in zoo:
        raise SpaError(f"no {framework} zoo model '{args.model}' (choose from {', '.join(zoo)})")
    if not args.output:
        raise SpaError("give the output path with -o OUT.onnx")
    output = check_output_path(args.output)
    export(args.model, output, args)
    print(f"wrote {output}")
    return 0


def _export_tflite(args) -> int:
    """A TFLite file is converted, not built from a zoo: --tflite replaces --model."""
    from ..io import check_output_path

    if not args.tflite:
        raise SpaError("--framework tflite converts a file: give it with --tflite MODEL.tflite")
    if not args.output:
        raise SpaError("give the output path with -o OUT.onnx")
    output = check_output_path(args.output)
    try:
        from frontends.tensorflow import export_tflite

        export_tflite(args.tflite, output)
    except ImportError as e:
        raise SpaError(missing(e) or str(e)) from None
    except ValueError as e:  # no such file, or a TFLite op tf2onnx cannot convert
        raise SpaError(str(e)) from None
    print(f"wrote {output}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a zoo model to ONNX")
    p.add_argument("--framework", help=f"{', '.join(FRAMEWORKS)} (default torch; --list alone lists them)")
    p.add_argument("--model", help="the zoo model's name (see --framework NAME --list)")
    p.add_argument("--tflite", metavar="MODEL.tflite", help="the TFLite file to convert (--framework tflite)")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    p.add_argument("--list", action="store_true", help="list the frameworks, or with --framework its zoo models")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch exporter")
    p.add_argument("--training", action="store_true", help="keep BatchNormalization unfused")
    p.set_defaults(run=cmd_export)
