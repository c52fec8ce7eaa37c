"""`spa finetune`: train a pruned model to compute what the original computes (distillation)."""
from __future__ import annotations

import sys

from .common import ratio, table, write_result


def cmd_finetune(args) -> int:
    from ..errors import SpaError
    from ..finetune import finetune
    from ..io import check_output_path

    if (args.data is None) == (args.data_free is None):
        raise SpaError("give the inputs to distill on with --data INPUTS.npz, or --data-free (one of the two)")
    inputs = [args.model, args.teacher] + [p for p in (args.data, args.val) if p]
    output = check_output_path(args.output, protected=inputs)
    if args.report:
        check_output_path(args.report, protected=inputs + [output])
    model, report = finetune(
        args.model, args.teacher, args.data, epochs=args.epochs, lr=args.lr, batch=args.batch,
        temperature=args.temperature, loss=args.loss, class_axis=args.class_axis, val=args.val, data_free=args.data_free, samples=args.samples,
        seed=args.seed, progress=sys.stderr.isatty(),
    )
    write_result(model, output, inputs, finetune_table(report), args.report, report)
    return 0


def finetune_table(report) -> str:
    where = report.evaluated_on
    rows = [[f"distillation loss ({where})", f"{report.loss_before:.4f}", f"{report.loss_after:.4f}",
             f"{(report.loss_after - report.loss_before) / report.loss_before * 100:+.1f}%" if report.loss_before else "-"]]
    if report.agreement_before is not None:
        rows.append([f"agrees with the teacher ({where})", _percent(report.agreement_before),
                     _percent(report.agreement_after), _points(report.agreement_before, report.agreement_after)])
    if report.accuracy_before is not None:
        rows.append(["validation accuracy", _percent(report.accuracy_before), _percent(report.accuracy_after),
                     _points(report.accuracy_before, report.accuracy_after)])
        rows.append(["teacher's validation accuracy", "", _percent(report.teacher_accuracy), ""])
    rows.append(["training inputs", "", f"{report.samples} ({report.inputs})",
                 f"{report.epochs} epochs, {report.seconds_per_epoch:.1f} s each"])
    rows.append(["written vs trained", "", f"{report.max_relative_error:.1e}", "max relative error"])
    return table(rows, ["", "pruned", "fine-tuned", ""])


def _percent(value) -> str:
    return f"{value * 100:.2f}%"


def _points(before, after) -> str:
    return f"{(after - before) * 100:+.2f} points"


def add_parser(subparsers) -> None:
    from ..finetune import DATA_FREE, DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_SAMPLES, DEFAULT_TEMPERATURE

    p = subparsers.add_parser("finetune", help="fine-tune a pruned model by distillation from the original, on unlabeled inputs")
    p.add_argument("model", help="the pruned ONNX model (the student)")
    p.add_argument("--teacher", required=True, metavar="ORIGINAL.onnx", help="the model before the prune")
    p.add_argument("--data", metavar="INPUTS.npz", help="one array per graph input, by name (no labels needed)")
    p.add_argument("--data-free", nargs="?", const="auto", choices=DATA_FREE, default=None,
                   help="train on inputs made from the teacher instead: auto (the default: inversion for a "
                        "classifier, as data-free OBSPA), gaussian or inversion")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"inputs made with --data-free (default {DEFAULT_SAMPLES})")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--val", metavar="VAL.npz", help="held-out inputs, with optional 'labels': loss, agreement and "
                                                    "accuracy before, after and per epoch")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--lr", type=ratio, default=DEFAULT_LR, help=f"Adam's learning rate, with cosine decay (default {DEFAULT_LR:g})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"default {DEFAULT_BATCH}")
    p.add_argument("--temperature", type=ratio, default=DEFAULT_TEMPERATURE,
                   help=f"softens the class distributions of the KL loss (default {DEFAULT_TEMPERATURE:g})")
    p.add_argument("--loss", default="auto", help="auto (KL on class outputs, relative MSE on the others, the default), "
                                                  "kl or mse on every output")
    p.add_argument("--class-axis", type=int, default=1,
                   help="with --loss kl, the class axis of outputs no Softmax computes (default 1; -1 for a "
                        "recognizer's [batch, steps, classes])")
    p.add_argument("--seed", type=int, default=0, help="seed for the batch order and the made-up inputs")
    p.add_argument("--report", metavar="OUT.json", help="write the report (per-epoch history included) as JSON")
    p.set_defaults(run=cmd_finetune)
