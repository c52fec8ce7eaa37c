"""A CRNN text recognizer (Shi et al., 2015) to train here on rendered words (bench/words.py).

A conv backbone with BatchNorm whose poolings take the height from 32 to 1 and the width from
128 to 32 (one step per 4 columns), then a sequence model over the width (a bidirectional LSTM,
or a 2-layer transformer encoder), then a Linear to the classes (class 0 the CTC blank). The
output is [batch, steps, classes] logits; decode them with bench.words.greedy_decode.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SEQUENCE_MODELS = ("lstm", "transformer")


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CRNN(nn.Module):
    def __init__(self, classes: int, channels: tuple[int, ...] = (32, 64, 128, 128, 128), hidden: int = 96,
                 sequence: str = "lstm", layers: int = 1, steps: int = 32):
        super().__init__()
        if sequence not in SEQUENCE_MODELS:
            raise ValueError(f"sequence model must be one of {SEQUENCE_MODELS}, got {sequence!r}")
        # height 32 -> 1 over five poolings; width 128 -> 32 over the first two only
        pools = [(2, 2), (2, 2), (2, 1), (2, 1), (2, 1)]
        blocks, cin = [], 1
        for cout, pool in zip(channels, pools):
            blocks += [_conv_bn(cin, cout), nn.MaxPool2d(pool, pool)]
            cin = cout
        self.cnn = nn.Sequential(*blocks)
        self.sequence = sequence
        if sequence == "lstm":
            self.rnn = nn.LSTM(cin, hidden, num_layers=layers, bidirectional=True, batch_first=True)
            width = 2 * hidden
        else:
            self.position = nn.Parameter(torch.zeros(1, steps, cin))
            layer = nn.TransformerEncoderLayer(cin, nhead=4, dim_feedforward=2 * cin, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
            width = cin
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        features = self.cnn(x).squeeze(2).transpose(1, 2)  # batch, steps, channels
        if self.sequence == "lstm":
            features, _ = self.rnn(features)
        else:
            features = self.encoder(features + self.position)
        return self.fc(features)


def train(model: CRNN, images: np.ndarray, targets: np.ndarray, lengths: np.ndarray, epochs: int = 12,
          lr: float = 2e-3, batch: int = 64, seed: int = 0, device: str = "cpu", progress=None) -> CRNN:
    """Adam with one-cycle decay on the CTC loss; `targets` are the concatenated 1-based classes of
    each image's text and `lengths` their lengths. `progress(epoch, loss)` is called after each
    epoch. Returns the model in eval mode, on the CPU."""
    torch.manual_seed(seed)
    model.to(device)
    x = torch.from_numpy(images)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            ids = idx.numpy()
            target = torch.from_numpy(np.concatenate([targets[offsets[i]:offsets[i + 1]] for i in ids])).to(device)
            log_probs = model(x[idx].to(device)).log_softmax(2).transpose(0, 1)  # steps, batch, classes (CTCLoss's order)
            input_lengths = torch.full((len(ids),), log_probs.shape[0], dtype=torch.long)
            loss = ctc(log_probs, target, input_lengths, torch.from_numpy(lengths[ids]).to(device))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(ids)
        if progress:
            progress(epoch, total / len(x))
    return model.cpu().eval()
