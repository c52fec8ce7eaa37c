"""Small random-initialized transformer models for testing SPA on attention graphs.

Every model has hidden size 64, two layers and a vocabulary of 100 tokens (text) or 32x32 images
in 8x8 patches (vision), and returns a single tensor (logits), so that the hidden size never
reaches a graph output. Every builder takes ``seed=0`` and returns an ``nn.Module`` in eval mode
whose parameters are all drawn from a seeded generator (:func:`init_transformer`).

Hand-written in PyTorch:

* ``bert_encoder``: BERT-style post-norm encoder with an additive padding mask;
* ``gpt_decoder``: LLaMA-style decoder (RMSNorm, RoPE, causal mask, SwiGLU, untied LM head);
* ``gqa_decoder``: the same with grouped-query attention (8 query heads, 2 key/value heads);
* ``vit_sdpa``: a ViT whose attention is ``F.scaled_dot_product_attention`` (separate q/k/v);
* ``vit_sdpa_qkv``: the same with timm-style fused qkv (reshape to (B, N, 3, H, D), unbind).

From ``transformers`` configuration classes (random weights, nothing downloaded):
``hf_bert``, ``hf_gpt2``, ``hf_vit``, ``hf_llama`` (GQA, 2 key/value heads). They use
transformers' default attention, ``attn_implementation="sdpa"``, which both exporters handle;
``hf_*_eager`` are the same models with ``attn_implementation="eager"`` (explicit
MatMul/Softmax attention; the builders take ``attn=``).

:data:`TRANSFORMER_ZOO` maps each name to a :class:`TransformerZooEntry`, which says what the
inputs are (:meth:`TransformerZooEntry.example_inputs`) and which torch exporters work for it
(``exporters``, with ``notes`` on the others). :func:`export_transformer` exports one by name.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models_zoo.torch_models import Attention, ZooEntry, init_model

__all__ = [
    "TransformerZooEntry", "TRANSFORMER_ZOO", "build", "example_inputs", "export_transformer",
    "init_transformer", "bert_encoder", "gpt_decoder", "gqa_decoder", "vit_sdpa", "vit_sdpa_qkv",
    "hf_bert", "hf_gpt2", "hf_vit", "hf_llama",
    "hf_bert_eager", "hf_gpt2_eager", "hf_vit_eager", "hf_llama_eager",
    "VOCAB", "HIDDEN", "HEADS", "LAYERS", "SEQ_LEN", "BATCH",
]

VOCAB = 100
HIDDEN = 64
HEADS = 4
LAYERS = 2
MLP = 128
SEQ_LEN = 16        # text models: fixed sequence length of the exports
MAX_POS = 32        # position tables are longer than the sequence
BATCH = 2
IMAGE = (3, 32, 32)
PATCH = 8
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------

def init_transformer(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministically re-initialize ``model`` (eval mode), as :func:`init_model` does, plus:

    * ``nn.Embedding`` tables ~ N(0, 1) (instead of N(0, 0.02));
    * GPT-2's ``Conv1D`` (a Linear with a (in, out) weight): Kaiming-normal over ``in``,
      small random bias;
    * every other 1-D parameter whose name says it is a norm's scale (RMSNorm, ...):
      U(0.5, 1.5), so that no norm is an identity.
    """
    init_model(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):
                w = m.weight  # (in, out)
                w.copy_(torch.randn(w.shape, generator=g) * (2.0 / w.shape[0]) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.LayerNorm):
                pass  # init_model did it
            elif "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), nn.Parameter):
                w = m.weight
                w.copy_(torch.rand(w.shape, generator=g) + 0.5)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, written out (as LLaMA does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(head_dim: int, max_pos: int = MAX_POS, base: float = 10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)              # (max_pos, head_dim)
    return emb.cos(), emb.sin()


def apply_rope(q, k, cos, sin):
    """q, k: (B, H, S, D); cos, sin: (S, D)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x, n_rep: int):
    """(B, KVH, S, D) -> (B, KVH * n_rep, S, D), each key/value head repeated n_rep times
    (expand + reshape, as LLaMA's ``repeat_kv``)."""
    b, kvh, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, s, d).reshape(b, kvh * n_rep, s, d)


# --------------------------------------------------------------------------------------------
# bert_encoder
# --------------------------------------------------------------------------------------------

class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim, self.dim = heads, dim // heads, dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, mask):
        b, s, _ = x.shape
        q = self.query(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.key(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.value(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
        ctx = scores.softmax(-1) @ v                                   # (B, H, S, D)
        return self.out(ctx.transpose(1, 2).reshape(b, s, self.dim))


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.attn = BertSelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, mask):
        x = self.norm1(x + self.attn(x, mask))                           # post-norm
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class BertEncoder(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = HIDDEN, heads: int = HEADS,
                 layers: int = LAYERS, mlp: int = MLP, max_pos: int = MAX_POS,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_pos, dim)
        self.seg = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, mlp) for _ in range(layers))
        self.pool = nn.Linear(dim, dim)
        self.cls = nn.Linear(dim, num_classes)
        self.register_buffer("position_ids", torch.arange(max_pos), persistent=False)

    def forward(self, input_ids, attention_mask):
        s = input_ids.shape[1]
        pos = self.position_ids[:s]
        # one segment (token type 0) everywhere: its embedding row is a constant
        x = self.tok(input_ids) + self.pos(pos) + self.seg.weight[0]
        x = self.norm(x)
        # (B, S) of 1 (token) / 0 (padding) -> additive (B, 1, 1, S)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        return self.cls(torch.tanh(self.pool(x[:, 0])))


def bert_encoder(seed: int = 0) -> nn.Module:
    """BERT-style encoder: token+position+segment embeddings, post-norm MHA (additive padding
    mask input), GELU MLP, tanh pooler and classifier on the first token."""
    return init_transformer(BertEncoder(), seed)


# --------------------------------------------------------------------------------------------
# gpt_decoder / gqa_decoder
# --------------------------------------------------------------------------------------------

class DecoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, max_pos: int = MAX_POS):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        input_shape = x.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)                 # as LLaMA: -1 heads
        q = self.q_proj(x).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(x).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(x).view(hidden_shape).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        n_rep = self.heads // self.kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5 + mask
        ctx = torch.matmul(scores.softmax(-1), v).transpose(1, 2)
        return self.o_proj(ctx.reshape(*input_shape, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp: int):
        super().__init__()
        self.input_norm = RMSNorm(dim)
        self.attn = DecoderAttention(dim, heads, kv_heads)
        self.post_attn_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.input_norm(x), cos, sin, mask)
        return x + self.mlp(self.post_attn_norm(x))


class Decoder(nn.Module):
    def __init__(self, heads: int = HEADS, kv_heads: int = HEADS, vocab: int = VOCAB,
                 dim: int = HIDDEN, layers: int = LAYERS, mlp: int = MLP, max_pos: int = MAX_POS):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, kv_heads, mlp) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)                 # untied
        cos, sin = rope_tables(dim // heads, max_pos)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, input_ids):
        s = input_ids.shape[1]
        x = self.embed(input_ids)
        cos, sin = self.cos[:s], self.sin[:s]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        mask = torch.zeros(s, s, dtype=x.dtype, device=x.device).masked_fill(
            ~causal, torch.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def gpt_decoder(seed: int = 0) -> nn.Module:
    """LLaMA-style decoder: hand-written RMSNorm, RoPE (rotate_half), causal mask, 4-head
    attention, SwiGLU MLP, final RMSNorm, untied LM head."""
    return init_transformer(Decoder(heads=HEADS, kv_heads=HEADS), seed)


def gqa_decoder(seed: int = 0) -> nn.Module:
    """gpt_decoder with grouped-query attention: 8 query heads, 2 key/value heads
    (K/V repeated by expand+reshape as LLaMA's repeat_kv)."""
    return init_transformer(Decoder(heads=8, kv_heads=2), seed)


# --------------------------------------------------------------------------------------------
# vit_sdpa
# --------------------------------------------------------------------------------------------

class SDPAAttention(Attention):
    """The torch zoo ViT's attention (separate q/k/v Linears, heads split by reshape), computed
    with ``F.scaled_dot_product_attention``."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)                    # (B, H, N, D)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FusedQKVAttention(nn.Module):
    """timm-style: one qkv Linear, reshape to (B, N, 3, H, D), permute, unbind,
    ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                          # (B, H, N, D) each
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SDPABlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, fused_qkv: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = (FusedQKVAttention if fused_qkv else SDPAAttention)(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTSDPA(nn.Module):
    def __init__(self, dim: int = HIDDEN, heads: int = HEADS, layers: int = LAYERS,
                 mlp: int = MLP, img: int = IMAGE[1], patch: int = PATCH,
                 num_classes: int = NUM_CLASSES, fused_qkv: bool = False):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.ModuleList(SDPABlock(dim, heads, mlp, fused_qkv) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def vit_sdpa(seed: int = 0) -> nn.Module:
    """ViT (8x8 patches, class token, position embedding, pre-norm) whose attention is
    F.scaled_dot_product_attention on separate q/k/v Linears."""
    return init_transformer(ViTSDPA(), seed)


def vit_sdpa_qkv(seed: int = 0) -> nn.Module:
    """vit_sdpa with timm-style attention: one fused qkv Linear, reshape to (B, N, 3, H, D),
    permute and unbind, then F.scaled_dot_product_attention."""
    return init_transformer(ViTSDPA(fused_qkv=True), seed)


# --------------------------------------------------------------------------------------------
# Hugging Face transformers models (random weights)
# --------------------------------------------------------------------------------------------

class HFLogits(nn.Module):
    """Wraps a ``transformers`` model: one or two tensors in (``names`` say which keyword each
    is), ``.logits`` out; ``use_cache=False`` for causal LMs. (Explicit positional parameters,
    not ``*inputs``: the dynamo exporter matches ``dynamic_shapes`` to the signature.)"""

    def __init__(self, model: nn.Module, names: tuple[str, ...], causal_lm: bool = False):
        super().__init__()
        self.model = model
        self.names = names
        self.causal_lm = causal_lm

    def forward(self, x, y=None):
        kw = {self.names[0]: x}
        if y is not None:
            kw[self.names[1]] = y
        if self.causal_lm:
            kw["use_cache"] = False
        return self.model(**kw).logits


def hf_bert(seed: int = 0, attn: str = "sdpa") -> nn.Module:
    """transformers BertForSequenceClassification (random; input_ids and attention_mask in,
    logits out)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=MLP,
                        max_position_embeddings=MAX_POS, num_labels=NUM_CLASSES,
                        attn_implementation=attn)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    return init_transformer(HFLogits(model, ("input_ids", "attention_mask")), seed)


def hf_gpt2(seed: int = 0, attn: str = "sdpa") -> nn.Module:
    """transformers GPT2LMHeadModel (random; LM head tied to the token embedding as in GPT-2;
    input_ids in, logits out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=HIDDEN, n_layer=LAYERS,
                        n_head=HEADS, n_inner=MLP, bos_token_id=0, eos_token_id=0, use_cache=False,
                        attn_implementation=attn)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    return init_transformer(HFLogits(model, ("input_ids",), causal_lm=True), seed)


def hf_vit(seed: int = 0, attn: str = "sdpa") -> nn.Module:
    """transformers ViTForImageClassification (random; 32x32 images, 8x8 patches;
    pixel_values in, logits out)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=IMAGE[1], patch_size=PATCH, num_channels=IMAGE[0],
                       hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       intermediate_size=MLP, num_labels=NUM_CLASSES, attn_implementation=attn)
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    return init_transformer(HFLogits(model, ("pixel_values",)), seed)


def hf_llama(seed: int = 0, attn: str = "sdpa") -> nn.Module:
    """transformers LlamaForCausalLM (random; 4 query heads, 2 key/value heads (GQA), untied
    LM head; input_ids in, logits out)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=2, max_position_embeddings=MAX_POS,
                         tie_word_embeddings=False, use_cache=False, attn_implementation=attn)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return init_transformer(HFLogits(model, ("input_ids",), causal_lm=True), seed)


def hf_bert_eager(seed: int = 0) -> nn.Module:
    """hf_bert with attn_implementation="eager" (explicit MatMul/Softmax attention)."""
    return hf_bert(seed, attn="eager")


def hf_gpt2_eager(seed: int = 0) -> nn.Module:
    """hf_gpt2 with attn_implementation="eager" (explicit MatMul/Softmax attention)."""
    return hf_gpt2(seed, attn="eager")


def hf_vit_eager(seed: int = 0) -> nn.Module:
    """hf_vit with attn_implementation="eager" (explicit MatMul/Softmax attention)."""
    return hf_vit(seed, attn="eager")


def hf_llama_eager(seed: int = 0) -> nn.Module:
    """hf_llama with attn_implementation="eager" (explicit MatMul/Softmax attention)."""
    return hf_llama(seed, attn="eager")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformerZooEntry(ZooEntry):
    """A :class:`ZooEntry` with what a transformer's inputs are.

    ``input_shape`` is the shape of the first input. ``inputs`` lists every input as
    ``(name, kind)``, kind ``"tokens"`` (int64 ids in ``[0, vocab)``, shape (batch, seq)),
    ``"mask"`` (int64 1/0 padding mask, shape (batch, seq), at least one token) or ``"image"``
    (float, shape ``input_shape``). ``exporters`` are the torch exporters that work (export and
    agree with torch in onnxruntime); ``notes`` says why the others do not.
    """

    inputs: tuple[tuple[str, str], ...] = (("input", "image"),)
    vocab: int = VOCAB
    exporters: tuple[str, ...] = ("dynamo", "torchscript")
    notes: str = ""
    dynamic_batch: bool = True
    hf: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.inputs)

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random example inputs (token ids in range, padding masks, images)."""
        g = torch.Generator().manual_seed(seed)
        b = self.input_shape[0] if batch is None else batch
        out: list[torch.Tensor] = []
        for _, kind in self.inputs:
            if kind == "image":
                out.append(torch.randn((b, *self.input_shape[1:]), generator=g))
            elif kind == "tokens":
                out.append(torch.randint(0, self.vocab, (b, *self.input_shape[1:]), generator=g))
            elif kind == "mask":
                s = self.input_shape[1]
                lengths = torch.randint(s // 2, s + 1, (b,), generator=g)
                lengths[0] = s                       # one full row
                out.append((torch.arange(s)[None, :] < lengths[:, None]).to(torch.int64))
            else:
                raise ValueError(f"unknown input kind {kind!r}")
        return tuple(out)


_TEXT = (BATCH, SEQ_LEN)
_IMAGE = (BATCH, *IMAGE)


def _entry(fn: Callable[..., nn.Module], shape, inputs, **kw) -> TransformerZooEntry:
    return TransformerZooEntry(fn, tuple(shape), " ".join((fn.__doc__ or "").split()),
                               inputs=inputs, **kw)


_TOKENS = (("input_ids", "tokens"),)
_TOKENS_MASK = (("input_ids", "tokens"), ("attention_mask", "mask"))
_DIFF = ("torchscript: with no attention_mask, transformers' causal-mask code looks for packed "
         "sequences with torch.diff (masking_utils.find_packed_sequence_indices), and the "
         "TorchScript exporter has no aten::diff (UnsupportedOperatorError); passing an "
         "attention_mask skips that path")

TRANSFORMER_ZOO: dict[str, TransformerZooEntry] = {
    "bert_encoder": _entry(bert_encoder, _TEXT, _TOKENS_MASK),
    "gpt_decoder": _entry(gpt_decoder, _TEXT, _TOKENS),
    "gqa_decoder": _entry(gqa_decoder, _TEXT, _TOKENS),
    "vit_sdpa": _entry(vit_sdpa, _IMAGE, (("input", "image"),)),
    "vit_sdpa_qkv": _entry(vit_sdpa_qkv, _IMAGE, (("input", "image"),)),
    "hf_bert": _entry(hf_bert, _TEXT, _TOKENS_MASK, hf=True),
    "hf_gpt2": _entry(hf_gpt2, _TEXT, _TOKENS, hf=True, exporters=("dynamo",), notes=_DIFF),
    "hf_vit": _entry(hf_vit, _IMAGE, (("pixel_values", "image"),), hf=True),
    "hf_llama": _entry(hf_llama, _TEXT, _TOKENS, hf=True, exporters=("dynamo",), notes=_DIFF),
    "hf_bert_eager": _entry(hf_bert_eager, _TEXT, _TOKENS_MASK, hf=True),
    "hf_gpt2_eager": _entry(hf_gpt2_eager, _TEXT, _TOKENS, hf=True, exporters=("dynamo",),
                            notes=_DIFF),
    "hf_vit_eager": _entry(hf_vit_eager, _IMAGE, (("pixel_values", "image"),), hf=True),
    "hf_llama_eager": _entry(hf_llama_eager, _TEXT, _TOKENS, hf=True, exporters=("dynamo",),
                             notes=_DIFF),
}
"""Small transformers (hidden 64, 2 layers, batch 2, sequence 16 or 32x32 images)."""


def build(name: str, seed: int = 0) -> nn.Module:
    """Build a transformer zoo model by name."""
    if name not in TRANSFORMER_ZOO:
        raise KeyError(f"unknown transformer zoo model {name!r}; known: {sorted(TRANSFORMER_ZOO)}")
    return TRANSFORMER_ZOO[name].build(seed=seed)


def example_inputs(name: str, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random example inputs for the transformer zoo model ``name``."""
    return TRANSFORMER_ZOO[name].example_inputs(batch, seed)


def export_transformer(name: str, path: str | os.PathLike, exporter: str = "dynamo",
                       seed: int = 0, batch: int | None = None, **kw: Any) -> str:
    """Build the transformer zoo model ``name`` and export it to ``path`` with
    :func:`frontends.torch.export` (dynamic batch where the model allows; fixed sequence length;
    input names from the registry, output ``logits``). Other keywords go to ``export``.

    Raises ``ValueError`` for an exporter that does not work for this model (see the entry's
    ``notes``).
    """
    from frontends.torch import export

    if name not in TRANSFORMER_ZOO:
        raise KeyError(f"unknown transformer zoo model {name!r}; known: {sorted(TRANSFORMER_ZOO)}")
    entry = TRANSFORMER_ZOO[name]
    if exporter not in entry.exporters:
        raise ValueError(f"exporter {exporter!r} does not work for {name}: {entry.notes}")
    kw.setdefault("dynamic_batch", entry.dynamic_batch)
    kw.setdefault("input_names", entry.input_names)
    kw.setdefault("output_names", ("logits",))
    return export(entry.build(seed=seed), entry.example_inputs(batch, seed), path,
                  exporter=exporter, **kw)
