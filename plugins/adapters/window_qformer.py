"""``window_qformer``: a Q-Former over short windows, a few queries per window (SALMONN, Granite Speech).

SALMONN: windows of 17 frames of 50 Hz (~0.33 s), stride 17, one query per window, a 2-layer Q-Former that
cross-attends in every layer. Granite Speech: windows of 15 frames, 3 queries each (downsampling by 5).

Windows start every ``stride`` frames and each is processed independently by transformers'
``Blip2QFormerModel`` with the same learned queries. A clip of ``n`` frames has ``ceil(n / stride)`` windows.
The frames missing from its last, partial window are, by ``last_window``:

- ``mask`` (default): masked out of the cross-attention, so the queries see only the clip.
- ``zeros``: zero frames the queries attend to, as Granite Speech's ``GraniteSpeechEncoderProjector`` pads
  (``nn.functional.pad`` to whole windows, no encoder attention mask). With ``window: 15``, ``num_queries: 3``,
  ``query_init_std: 1.0`` and no ``input_norm`` this adapter is that projector (``query``, ``qformer``, ``linear``
  under the same names).

Either way a clip's windows hold only its own frames (batch padding is zeroed, or masked), and windows wholly in
the padding are never computed, so a clip gives the same embeddings alone or in any batch.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import AdapterOutput, lengths_to_mask, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames
from slmzoo_plugins.adapters.qformer import QFormerAdapter


class WindowQFormerAdapter(QFormerAdapter):
    """``hidden [B, T, C]`` -> ``embeds [B, ceil(T / stride) * num_queries, D]``: the clip-level Q-Former's
    queries, Q-Former and projection, run per window."""

    name = "window_qformer"

    def __init__(self, options, context):
        super().__init__(options, context)
        self.window, self.stride = options.window, options.stride or options.window
        self.mask_last_window = options.last_window == "mask"

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / self.stride * self.num_queries

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, W * Q, D]``, lengths ``ceil(n / stride) * Q``."""
        check_frames("window_qformer", hidden)
        batch, frames, _ = hidden.shape
        num_windows = -(-lengths // self.stride)  # [B]
        max_windows = -(-frames // self.stride)
        # Pad so that every window start < T has a full window: [B, (W - 1) * stride + window, C]
        pad = (max_windows - 1) * self.stride + self.window - frames
        # Zeros after the norm: in "zeros" mode the queries attend to the padding, which must be exact zeros.
        hidden = zero_padding(self.input_norm(zero_padding(hidden, lengths)), lengths)
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
        windows = hidden.unfold(1, self.window, self.stride).transpose(2, 3)  # [B, W, window, C]
        valid = lengths_to_mask(num_windows, max_windows)  # [B, W]: windows with at least one real frame
        windows = windows[valid]  # [N, window, C]
        window_masks = None  # "zeros": every frame of a window is attended to, as Granite's projector does
        if self.mask_last_window:
            frame_mask = lengths_to_mask(lengths, frames + pad)
            window_masks = frame_mask.unfold(1, self.window, self.stride)[valid].long()  # [N, window]
        queries = self.query.expand(windows.shape[0], -1, -1).to(windows.dtype)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=windows, encoder_attention_mask=window_masks)
        projected = self.linear(out.last_hidden_state.to(self.linear.weight.dtype))  # [N, Q, D]
        embeds = projected.new_zeros(batch, max_windows, self.num_queries, projected.shape[-1])
        embeds[valid] = projected
        return AdapterOutput(embeds=embeds.flatten(1, 2), lengths=num_windows * self.num_queries)
