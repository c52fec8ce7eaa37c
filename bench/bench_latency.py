"""Does the pruned model run faster? onnxruntime latency before and after, side by side.

    python bench/bench_latency.py [--models resnet18 resnet50 mobilenet_v2 vit_b_16 bert]
                                  [--ratios 0.3 0.5] [--round-to auto 1 8] [--batch 1] [--runs 30] [--threads N]

Exports each model with random, all different weights (torchvision's ResNet-18, ResNet-50, MobileNetV2 and
ViT-B/16 at 224x224; a 6-layer BERT-base from the `transformers` configuration classes, 128
tokens), prunes it with L1 at each ratio (a transformer: that ratio of its heads and of its MLP
channels, its hidden size left whole) and channel multiple (--round-to: auto, the default of
`spa prune`, or N), and times the original and the pruned models in one onnxruntime run, taking turns (spa.runtime.latency). Prints one row
per model, ratio, multiple and batch size: parameters, FLOPs, median latency before and after,
and the speed-up.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")


def export(name: str, path: str) -> str:
    import torch

    from frontends.torch import export as export_torch

    torch.manual_seed(0)
    if name in TORCHVISION:
        import torchvision

        model, example, names = getattr(torchvision.models, name)(num_classes=1000), torch.randn(1, 3, 224, 224), {}
    elif name == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(num_hidden_layers=6, attn_implementation="sdpa")  # BERT-base, half the layers
        model = BertForSequenceClassification(config)
        tokens = torch.randint(0, config.vocab_size, (1, 128))
        example = (tokens, torch.ones_like(tokens))
        names = {"input_names": ("input_ids", "attention_mask"), "output_names": ("logits",)}
    else:
        raise SystemExit(f"unknown model {name!r}: choose from {', '.join(TORCHVISION)}, bert")
    # Trained-like weights: at initialization many parameters are equal (zero biases, unit norms),
    # and the exporter shares equal constants, which would couple layers a trained model keeps apart.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return export_torch(model.eval(), example, path, **names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*TORCHVISION, "bert"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--round-to", nargs="+", type=lambda t: t if t == "auto" else int(t), default=["auto", 1])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    args = parser.parse_args()

    import onnx

    import spa
    from spa.cli.common import table
    from spa.runtime import latency, random_inputs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export(name, os.path.join(tmp, f"{name}.onnx"))
            kinds = {g.kind for g in spa.analyze(path).prunable}
            model = onnx.load(path)
            for ratio, round_to in itertools.product(args.ratios, args.round_to):
                # a transformer: heads and MLP channels; its hidden size (approximate: LayerNorm) stays
                heads = {"head_ratio": ratio, "hidden_ratio": 0.0} if "heads" in kinds else {}
                pruned, report = spa.prune(path, ratio=ratio, round_to=round_to, **heads)
                for batch in args.batch:
                    feeds = random_inputs(model, batch=batch)
                    before, after = latency([path, pruned], feeds, repeats=args.runs, threads=args.threads)
                    rows.append([name, f"{ratio:.1f}" + (" +heads" if heads else ""), str(round_to), str(batch),
                                 f"{report.params_before / 1e6:.2f}M -> {report.params_after / 1e6:.2f}M",
                                 f"{report.flops_before / 1e9:.2f}G -> {report.flops_after / 1e9:.2f}G",
                                 f"{before['median_ms']:.2f}", f"{after['median_ms']:.2f}",
                                 f"{before['median_ms'] / after['median_ms']:.2f}x"])
                    print(" | ".join(rows[-1]), flush=True)
    print(table(rows, ["model", "ratio", "round-to", "batch", "params", "FLOPs (MACs)", "before ms", "after ms", "speed-up"]))


if __name__ == "__main__":
    main()
