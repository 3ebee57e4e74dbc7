"""``multi``: several encoders side by side, aligned to one frame rate and concatenated on channels.

SALMONN runs Whisper and BEATs (both 50 per second) and concatenates their frames one for one, padding the shorter;
WavLLM does the same with Whisper and WavLM. Here every encoder runs on the same clips, then each output is brought
to the target rate (``align``: the first encoder's, the highest or the lowest) by time, clip by clip, over the clip's
valid frames only, so padding never leaks into a real frame:

- target frame ``j`` of a clip sits at ``(j + 0.5) / R`` seconds; from a source at rate ``r`` it takes ``nearest``
  frame, a ``linear`` interpolation of the two around it, or (``pool``) the mean of the source frames its span
  ``[j r / R, (j + 1) r / R)`` covers (at least one). Positions past a source's last valid frame take that frame
  (SALMONN pads with zeros there instead; a frame or two at the end of a clip).
- equal rates are the identity up to that end handling, which is what SALMONN's pad-and-concatenate does.
- target lengths are the target encoder's lengths; ``output_dim`` is the sum of the encoders' widths.

Sub-encoders that need another sampling rate (CLAP: 48 kHz) get each clip resampled (polyphase, ``slmzoo.audio``).
Each sub-encoder's own ``layer`` option applies to it; ``layer: all`` (stacked layers) is refused here, as stacks of
different depths cannot be concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Encoder, EncoderOutput, lengths_to_mask


def alignment_matrix(source_len: int, target_len: int, source_rate: float, target_rate: float, mode: str,
                     dtype=torch.float32, device=None) -> torch.Tensor:
    """``[target_len, source_len]`` weights mapping one clip's valid source frames to its target frames by time."""
    weights = torch.zeros(target_len, source_len, dtype=dtype, device=device)
    ratio = source_rate / target_rate
    rows = torch.arange(target_len, device=device)
    if mode == "pool":
        start = torch.clamp(torch.floor(rows * ratio).long(), max=source_len - 1)
        end = torch.maximum(torch.clamp(torch.floor((rows + 1) * ratio).long(), max=source_len), start + 1)
        cols = torch.arange(source_len, device=device)
        inside = (cols[None] >= start[:, None]) & (cols[None] < end[:, None])
        weights[inside] = 1.0
        return weights / weights.sum(dim=1, keepdim=True)
    position = torch.clamp((rows + 0.5) * ratio - 0.5, 0, source_len - 1)
    if mode == "nearest":
        weights[rows, torch.floor(position + 0.5).long().clamp(max=source_len - 1)] = 1.0
        return weights
    low = torch.floor(position).long()
    high = torch.clamp(low + 1, max=source_len - 1)
    frac = (position - low).to(dtype)
    weights[rows, low] += 1.0 - frac
    weights[rows, high] += frac
    return weights


def align(hidden: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, source_rate: float,
          target_rate: float, mode: str) -> torch.Tensor:
    """``hidden [B, T, C]`` -> ``[B, max(target_lengths), C]``, each clip mapped from its ``lengths`` valid frames."""
    out = hidden.new_zeros(hidden.shape[0], int(target_lengths.max()), hidden.shape[-1])
    for b, (n, m) in enumerate(zip(lengths.tolist(), target_lengths.tolist())):
        if n == m and source_rate == target_rate:
            out[b, :m] = hidden[b, :n]
            continue
        weights = alignment_matrix(n, m, source_rate, target_rate, mode, hidden.dtype, hidden.device)
        out[b, :m] = weights @ hidden[b, :n]
    return out


class MultiEncoder(Encoder):
    """Waveforms ``[B, S]`` -> concatenated, time-aligned encoder states ``[B, T, sum(C_i)]``."""

    def __init__(self, options, context):
        super().__init__()
        encoders = []
        for i, (spec, sub_options) in enumerate(options.resolved_encoders()):
            if getattr(sub_options, "layer", "last") == "all":
                raise ValueError(f"encoder.encoders[{i}].layer: 'all' (stacked layers) cannot be concatenated with "
                                 "other encoders; use 'last', an index or 'weighted'")
            encoders.append(context.build(spec, sub_options, f"encoder.encoders[{i}]"))
        self.encoders, self.blocks = nn.ModuleList(encoders), [dict(block) for block in options.encoders]
        rates = [e.frame_rate for e in encoders]
        pick = {"first": 0, "max": max(range(len(rates)), key=rates.__getitem__),
                "min": min(range(len(rates)), key=rates.__getitem__)}[options.align]
        self.target, self.mode = pick, options.resample
        self.frame_rate = rates[pick]
        self.sampling_rate = encoders[0].sampling_rate
        self.output_dim = sum(e.output_dim for e in encoders)
        self.stacks_layers = False

    def standalone_options(self) -> dict | None:
        """Each sub-encoder block with its own standalone options in place of its ``pretrained`` source."""
        blocks = []
        for block, encoder in zip(self.blocks, self.encoders):
            block = dict(block)
            if block.get("pretrained"):
                standalone = encoder.standalone_options()
                if standalone is None:
                    return None
                block.update(standalone, pretrained=None)
            blocks.append(block)
        return {"encoders": blocks}

    def _input_for(self, encoder: Encoder, audio: torch.Tensor, lengths: torch.Tensor):
        """The batch at ``encoder.sampling_rate``: resampled clip by clip when it differs."""
        if encoder.sampling_rate == self.sampling_rate:
            return audio, lengths
        from slmzoo.audio import resample

        clips = [torch.from_numpy(resample(audio[b, :n].float().cpu().numpy(), self.sampling_rate,
                                           encoder.sampling_rate)) for b, n in enumerate(lengths.tolist())]
        new_lengths = torch.tensor([len(c) for c in clips], device=lengths.device)
        batch = audio.new_zeros(len(clips), int(new_lengths.max()))
        for b, clip in enumerate(clips):
            batch[b, : len(clip)] = clip.to(batch)
        return batch, new_lengths

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]``, ``lengths [B]`` samples -> ``hidden [B, T, sum(C_i)]`` at the target rate, the target
        encoder's ``lengths [B]``; padded frames zero."""
        outputs = [encoder(*self._input_for(encoder, audio, lengths)) for encoder in self.encoders]
        target = outputs[self.target].lengths
        parts = [align(out.hidden, out.lengths, target, encoder.frame_rate, self.frame_rate, self.mode)
                 for out, encoder in zip(outputs, self.encoders)]
        hidden = torch.cat(parts, dim=-1) * lengths_to_mask(target)[..., None].to(parts[0].dtype)
        return EncoderOutput(hidden=hidden, lengths=target)
