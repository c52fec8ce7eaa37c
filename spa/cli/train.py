"""`spa train`: train with a group-sparsity optimizer, then remove the channels that trained to zero."""
from __future__ import annotations

from .common import before_after, ratio, table, write_result


def cmd_train(args) -> int:
    from ..io import check_output_path
    from ..train import train

    inputs = [args.model, args.data] + ([args.val] if args.val else [])
    output = check_output_path(args.output, protected=inputs)
    if args.report:
        check_output_path(args.report, protected=inputs + [output])
    pruned, report = train(
        args.model, args.data, val=args.val, loss=args.loss, optimizer=args.optimizer,
        target_sparsity=args.target_sparsity, target_flops=args.target_flops, epochs=args.epochs, lr=args.lr, batch=args.batch, base=args.base,
        lmbda=args.lmbda, seed=args.seed, erase=args.erase,
    )
    write_result(pruned, output, inputs, train_table(report), args.report, report)
    return 0


def train_table(report) -> str:
    rows = [
        before_after("parameters", report.params_before, report.params_after),
        before_after("FLOPs (MACs)", report.flops_before, report.flops_after),
        *([["FLOPs target", "", f"{report.flops_ratio:.3f}", f"of {report.target_flops:g} asked"]]
          if report.target_flops is not None else []),
        ["zero groups removed", "", f"{report.zero_groups} of {report.groups}", f"sparsity {report.group_sparsity:.3f}"],
    ]
    if report.val_accuracy is not None:
        rows.append(["validation accuracy", "", f"{report.val_accuracy * 100:.2f}%", ""])
    rows.append(["pruned vs trained", "", f"{report.max_relative_error:.1e}", "max relative error"])
    rows += [["warning", "", text, ""] for text in report.warnings]
    return table(rows, ["", "trained", "pruned", ""])



def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train with DHSPG, HSPG, HESSO or ATO, then remove the channels that trained to zero")
    p.add_argument("model", help="the ONNX model (export it with BatchNormalization unfused to train it)")
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="one array per graph input (by name) and 'labels'")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--val", metavar="VAL.npz", help="validation arrays, same keys: accuracy per epoch and of the result")
    p.add_argument("--loss", default="ce", help="ce (cross-entropy on class ids, the default) or mse")
    p.add_argument("--optimizer", default="dhspg",
                   help="the optimizer, by its name in spa.train.OPTIMIZERS: dhspg (the default), hspg, hesso, ato "
                        "(needs --target-flops) or h2spg (erases whole structures: --erase N or --target-flops)")
    p.add_argument("--target-sparsity", type=ratio, default=0.5, help="fraction of channels to train to zero (default 0.5)")
    p.add_argument("--target-flops", type=ratio, default=None, metavar="F",
                   help="instead of --target-sparsity: the fraction of the model's FLOPs to keep (0.5: half)")
    p.add_argument("--erase", type=int, default=None, metavar="N",
                   help="with --optimizer h2spg: train N whole structures (residual branches, attention or MLP "
                        "sub-layers) to zero and erase them")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=ratio, default=None, help="learning rate (default 0.1 for sgd, 3e-3 for adam and adamw)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--base", default="sgd", help="the base optimizer: sgd (with momentum 0.9, the default), adam or adamw")
    p.add_argument("--lmbda", type=ratio, default=None, help="group-lasso weight lambda (see the README)")
    p.add_argument("--seed", type=int, default=0, help="seed for the batch order")
    p.add_argument("--report", metavar="OUT.json", help="write the report (per-epoch history included) as JSON")
    p.set_defaults(run=cmd_train)
