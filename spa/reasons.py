"""Why a group is blocked or approximate: a stable, machine-readable code beside each reason's text.

Every verdict a rule gives (`Block`, `Approximate`, `Summed`, `Requires`, and an `Unknown` raised
inside a rule) carries a `code`; the analysis keeps each reason as a `Reason`, a `str` (its text,
as before) with a `.code`. `spa analyze --json` lists them as `blocked_codes` / `approximate_codes`
beside `blocked` / `approximate`, a prune report's `blocked` entries have `codes`, and
`spa analyze` prints a summary by code. Codes never change meaning; new ones may be added.
A user's rule that gives no code gets `other`.
"""
from __future__ import annotations

OTHER = "other"

REASON_CODES: dict[str, str] = {
    # blocked
    "no_rule": "an operator with no pruning rule (another domain's, a custom one, control flow)",
    "graph_output": "the channels reach a graph output: the model's interface never changes",
    "graph_input": "the channels reach a graph input",
    "kept": "kept by --keep (keep=)",
    "reshape_mixes_axes": "a reshape mixes the pruned axis with others, so no channel maps to whole slices",
    "runtime_shape": "a shape, size, bound or index computed at run time from something SPA cannot follow",
    "unknown_size": "a tensor's shape or an axis's size is not known statically",
    "shapes_disagree": "the shapes an operator sees contradict each other (a stale declaration)",
    "bad_attributes": "an operator whose attributes or shapes make no sense to its rule",
    "reduction_over_channels": "a reduction, softmax or statistic over the pruned axis that a removed channel would change",
    "returns_positions": "an output holding positions along the pruned axis (ArgMax, MaxPool's indices)",
    "mixes_axis": "the operator combines or moves elements along the axis (a window, attention, a resize, a scan over time)",
    "strided_slice": "a Slice with a step other than 1 on the pruned axis",
    "padding": "a Pad that crops the axis, copies its channels, or adds channels of its own",
    "indexing": "a Gather that picks channels alone or with multi-dimensional indices",
    "grouped_conv": "the within-group axis of a grouped convolution",
    "block_quantization": "quantization in blocks along the pruned axis",
    "rewrite_failed": "the rewriter cannot fix an operator for the removed channels",
    "breaks_model": "the pruned model fails the final check (onnx.checker, shape inference, onnxruntime)",
    # approximate
    "normalization_over_channels": "a normalization whose statistics run over the pruned channels",
    "mean_over_channels": "a mean over the pruned channels",
    "sum_over_nonzero": "a sum or norm over pruned channels that are not zero there",
    OTHER: "a reason a user's rule gave without a code",
}


class Reason(str):
    """A reason's text (a plain `str`, so existing code reading reasons as text keeps working)
    with its stable `code` (see REASON_CODES)."""

    code: str

    def __new__(cls, text: str, code: str = OTHER):
        self = super().__new__(cls, text)
        self.code = getattr(text, "code", OTHER) if code == OTHER else code
        return self

    def __getnewargs__(self):
        return str(self), self.code


def code_of(reason) -> str:
    """The code of a reason; `other` for a plain string."""
    return getattr(reason, "code", OTHER)
