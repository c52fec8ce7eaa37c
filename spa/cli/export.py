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

    return {"torch": (torch_zoo, torch_export), "tf": (keras_zoo, keras_export), "jax": (flax_zoo, flax_export)}


def cmd_export(args) -> int:
    from ..io import check_output_path

    frameworks = zoo_frameworks()
    if args.framework not in frameworks:
        raise SpaError(f"unknown framework '{args.framework}' (choose from {', '.join(frameworks)})")
    load_zoo, export = frameworks[args.framework]
    try:
        zoo = load_zoo()
    except ImportError as e:
        raise SpaError(missing(e) or str(e)) from None
    if args.list or not args.model:
        print(table([[n, getattr(e, "description", "")] for n, e in zoo.items()], ["model", "description"]))
        return 0
    if args.model not in zoo:
        raise SpaError(f"no {args.framework} zoo model '{args.model}' (choose from {', '.join(zoo)})")
    if not args.output:
        raise SpaError("give the output path with -o OUT.onnx")
    output = check_output_path(args.output)
    export(args.model, output, args)
    print(f"wrote {output}")
    return 0



def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a zoo model to ONNX")
    p.add_argument("--framework", default="torch", help="torch, tf or jax (default torch)")
    p.add_argument("--model", help="the zoo model's name (see --list)")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    p.add_argument("--list", action="store_true", help="list the zoo models of the framework")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch exporter")
    p.add_argument("--training", action="store_true", help="keep BatchNormalization unfused")
    p.set_defaults(run=cmd_export)
