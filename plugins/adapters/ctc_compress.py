"""``ctc_compress``: CTC compression (Speech-LLaMA): a CTC head labels every frame, frames are merged per label.

A Linear CTC head maps each frame to ``vocab_size`` logits (blank = 0). Along the greedy CTC path, a run of
consecutive frames with the same label becomes one frame, their average (``avg``); runs of blanks are removed
(``remove_blank``). A clip whose frames are all blank keeps its single (blank) run, so it never becomes empty.
The compressed frames go through a small transformer (Speech-LLaMA's 4-layer "audio encoder") and a Linear
into the LLM width. The CTC head is trained by :meth:`CTCCompressAdapter.ctc_loss` on the logits of the last
call; the greedy path itself carries no gradient, the averages do.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, lengths_to_mask, zero_padding
from slmzoo_plugins.adapters.blocks import MaskedTransformer, check_frames, require_frames

BLANK = 0


def ctc_segments(labels: torch.Tensor, lengths: torch.Tensor, remove_blank: bool = True):
    """Where each frame goes when a greedy CTC path is collapsed.

    ``labels [B, T]`` (argmax per frame), ``lengths [B]`` -> ``index [B, T]`` (the output frame each input frame
    is averaged into, -1 for dropped frames: padding, blank runs) and ``lengths [B]`` (runs kept per clip).
    """
    mask = lengths_to_mask(lengths, labels.shape[1])
    starts = torch.ones_like(mask)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    keep = mask
    if remove_blank:
        nonblank = (labels != BLANK) & mask
        keep = nonblank | (mask & ~nonblank.any(1, keepdim=True))  # an all-blank clip keeps its one blank run
    starts = starts & keep
    index = torch.where(keep, starts.long().cumsum(1) - 1, -1)
    return index, starts.sum(1)


def average_segments(hidden: torch.Tensor, index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Average the frames of ``hidden [B, T, C]`` sharing an ``index [B, T]`` (-1: dropped) -> ``[B, T', C]``."""
    batch, _, channels = hidden.shape
    max_len = int(lengths.max()) if lengths.numel() else 0
    slot = torch.where(index >= 0, index, max_len)  # dropped frames land in a spare slot, cut below
    sums = hidden.new_zeros(batch, max_len + 1, channels)
    sums = sums.scatter_add(1, slot[..., None].expand(-1, -1, channels), hidden)
    counts = hidden.new_zeros(batch, max_len + 1).scatter_add(1, slot, torch.ones_like(slot, dtype=hidden.dtype))
    return (sums / counts.clamp(min=1)[..., None])[:, :max_len]


class CTCCompressAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, T', D]`` with ``T'`` the number of kept CTC runs per clip."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("ctc_compress", context)
        self.remove_blank = options.remove_blank
        self.ctc_head = nn.Linear(context.encoder_dim, options.vocab_size)
        self.transformer = MaskedTransformer(context.encoder_dim, options.num_layers, options.num_heads,
                                             options.ff_dim, options.dropout)
        self.linear = nn.Linear(context.encoder_dim, context.llm_dim)
        self.output_dim = context.llm_dim
        self.ctc_weight = options.ctc_weight
        self.ctc_logits: torch.Tensor | None = None  # [B, T, V] of the last call, for ctc_loss
        self.ctc_lengths: torch.Tensor | None = None

    def output_frame_rate(self, input_frame_rate: float) -> None:
        return None  # one embedding per CTC label run: depends on the speech, not on its duration

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T', D]``, lengths: kept runs per clip."""
        check_frames("ctc_compress", hidden)
        hidden = zero_padding(hidden, lengths)
        self.ctc_logits, self.ctc_lengths = self.ctc_head(hidden), lengths
        index, new_lengths = ctc_segments(self.ctc_logits.argmax(-1), lengths, self.remove_blank)
        compressed = average_segments(hidden, index, new_lengths)
        embeds = self.linear(self.transformer(compressed, new_lengths))
        return AdapterOutput(embeds=zero_padding(embeds, new_lengths), lengths=new_lengths)

    def ctc_loss(self, targets: torch.Tensor, target_lengths: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """CTC loss of the last call's logits: ``targets [B, S]`` label ids (no blank), ``target_lengths [B]``."""
        if self.ctc_logits is None:
            raise RuntimeError("adapter ctc_compress: ctc_loss needs a forward call first")
        log_probs = self.ctc_logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, V]
        return nn.functional.ctc_loss(log_probs, targets, self.ctc_lengths, target_lengths, blank=BLANK,
                                      reduction=reduction, zero_infinity=True)

    def auxiliary_loss(self, targets: list[torch.Tensor]) -> torch.Tensor | None:
        """``ctc_weight`` x CTC loss of the last call against each clip's response token ids (+1: 0 is blank)."""
        if self.ctc_weight == 0:
            return None
        labels = [t + 1 for t in targets]
        top = max((int(t.max()) for t in labels if t.numel()), default=0)
        if top >= self.ctc_head.out_features:
            raise ValueError(f"adapter ctc_compress: vocab_size={self.ctc_head.out_features} is too small for CTC on "
                             f"the LLM's token ids (needs > {top}); raise adapter.vocab_size or set ctc_weight: 0")
        lengths = torch.tensor([len(t) for t in labels], device=self.ctc_logits.device)
        padded = nn.utils.rnn.pad_sequence(labels, batch_first=True) if labels else lengths.new_zeros(0, 0)
        return self.ctc_weight * self.ctc_loss(padded, lengths)
