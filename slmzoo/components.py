"""Base classes and outputs shared by every component: the contracts between pipeline stages.

Data flow (every stage carries lengths; a padded frame never reaches a real one)::

    audio [B, S] @ encoder.sampling_rate, lengths [B]
      -> Encoder  -> EncoderOutput(hidden [B, T, C] or [B, L, T, C], lengths [B])
      -> Adapter  -> AdapterOutput(embeds [B, T', D], lengths [B])       D = LLM width
      -> Fusion   -> LLM inputs (inputs_embeds, attention_mask, labels, ...)
      -> LLM      -> loss, logits, generate()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` boolean mask, True on real frames."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def zero_padding(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero the padded frames of ``hidden [B, T, ...]`` so convolutions and stacking see exact zeros there."""
    mask = lengths_to_mask(lengths, hidden.shape[1])
    return hidden * mask.view(*mask.shape, *([1] * (hidden.dim() - 2))).to(hidden.dtype)


def key_padding_bias(lengths: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias ``[B, 1, 1, T]``: 0 on real keys, the dtype's minimum on padded keys."""
    mask = lengths_to_mask(lengths, max_len)
    bias = torch.zeros(mask.shape, dtype=dtype, device=lengths.device)
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


@dataclass
class EncoderOutput:
    """``hidden [B, T, C]`` (or ``[B, L, T, C]`` when all layers are kept) and ``lengths [B]`` in frames."""

    hidden: torch.Tensor
    lengths: torch.Tensor


@dataclass
class AdapterOutput:
    """``embeds [B, T', D]`` in the LLM width with ``lengths [B]``; token-mapping adapters set ``units [B, T']``."""

    embeds: torch.Tensor | None
    lengths: torch.Tensor
    units: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # e.g. a CTC loss an adapter contributes to training


@dataclass
class FusedInputs:
    """What a fusion hands to the LLM for one batch."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L] 1 on real positions
    labels: torch.Tensor | None = None  # [B, L] -100 where no loss is taken
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cross-attention memory for in-layer fusions


def config_fields(config) -> dict[str, Any]:
    """A transformers config as inline card fields: what differs from its class defaults, plus ``model_type``."""
    fields = config.to_diff_dict()
    for noise in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        fields.pop(noise, None)
    fields["model_type"] = config.model_type
    return fields


class Standalone:
    """Components whose card block may name a ``pretrained`` source (a hub id, a folder, a file)."""

    def standalone_options(self) -> dict[str, Any] | None:
        """Card options that rebuild this component exactly without its ``pretrained`` source: the inline
        ``config`` and any settings read from the source (feature extraction). A self-contained save writes them
        into its card, with every weight in the checkpoint. ``None``: the component cannot do without its source.

        The default covers components keeping a transformers config in ``self.config``."""
        config = getattr(self, "config", None)
        return {"config": config_fields(config)} if hasattr(config, "to_diff_dict") else None


class Encoder(Standalone, nn.Module):
    """Waveforms in, frames out. Subclasses set ``output_dim``, ``frame_rate`` and ``sampling_rate``."""

    output_dim: int
    frame_rate: float  # output frames per second of audio
    sampling_rate: int = 16000

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        """``audio [B, S]`` float waveforms zero-padded on the right, ``lengths [B]`` in samples."""
        raise NotImplementedError


class Adapter(Standalone, nn.Module):
    """Encoder frames -> LLM-width embeddings."""

    output_dim: int

    def output_frame_rate(self, input_frame_rate: float) -> float | None:
        """Embeddings per second of audio reaching the LLM; ``None`` when fixed per clip (learned queries)."""
        return input_frame_rate

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:  # pragma: no cover
        raise NotImplementedError

    def auxiliary_loss(self, targets: list[torch.Tensor]) -> torch.Tensor | None:
        """A loss the adapter adds in training (e.g. CTC), given each clip's response token ids ``[S_i]``.

        Called right after ``forward`` on the same batch, only when every item has exactly one clip.
        """
        return None


class Fusion(Standalone, nn.Module):
    """Combines audio embeddings with the tokenized prompt for the LLM."""

    def fuse(
        self,
        llm: "LanguageModel",
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_embeds: list[torch.Tensor],
        labels: torch.Tensor | None = None,
        padding_side: str = "right",
    ) -> FusedInputs:  # pragma: no cover - abstract
        """``input_ids [B, L]`` hold one audio tag per entry of ``audio_embeds``, in order. Each entry is a
        clip's valid ``[T_i, D]`` embeddings or, when the adapter maps audio to tokens (sets
        ``AdapterOutput.units``), its ``[T_i]`` long unit ids, which the fusion embeds (``token_space``)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop per-call state (an audio memory kept for in-layer attention) once generation is done.

        Not called after ``forward`` in training: gradient checkpointing re-runs layers during backward.
        """


class LanguageModel(Standalone, nn.Module):
    """A causal LM with its tokenizer. Subclasses set ``hidden_size``, ``tokenizer`` and ``audio_token_id``."""

    hidden_size: int
    tokenizer: Any
    audio_token_id: int
    is_encoder_decoder: bool = False  # True: inputs_embeds feed the encoder, labels are the decoder's targets

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs_embeds, attention_mask, labels=None, **extra):  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, inputs_embeds, attention_mask, **generation_kwargs) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
