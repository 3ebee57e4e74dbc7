"""Base classes and outputs shared by every component: the contracts between pipeline stages.

Data flow (every stage carries lengths; a padded frame never reaches a real one)::

    audio [B, S] @ encoder.sampling_rate, lengths [B]
      -> Encoder  -> EncoderOutput(hidden [B, T, C] or [B, L, T, C], lengths [B])
      -> Adapter  -> AdapterOutput(embeds [B, T', D], lengths [B])       D = LLM width
      -> Fusion   -> LLM inputs (inputs_embeds, attention_mask, labels, ...)
      -> LLM      -> hidden states [B, L, D] -> head -> logits [B, L, V]; loss; cached generate()

Everything the kernel, the fusions and the training loop use of a component is declared here; a component that
implements exactly its base class works everywhere (``slmzoo.testing`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slmzoo.processing import UsesProcessor
from slmzoo.prompting import IGNORE_INDEX


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


class Component(nn.Module):
    """What every component shares, whatever its kind."""

    #: True when the component applies its card block's ``lora`` itself (the LLM wrappers use peft's task
    #: wrappers); otherwise the builder injects it (:func:`slmzoo.lora.add_lora`).
    applies_own_lora: bool = False

    def standalone_options(self) -> dict[str, Any] | None:
        """Card options that rebuild this component exactly without its ``pretrained`` source: the inline
        ``config`` and any settings read from the source (feature extraction). A self-contained save writes them
        into its card, with every weight in the checkpoint. ``None``: the component cannot do without its source.

        The default covers components keeping a transformers config in ``self.config``."""
        config = getattr(self, "config", None)
        return {"config": config_fields(config)} if hasattr(config, "to_diff_dict") else None

    def context_fields(self) -> dict[str, Any]:
        """What components built after this one may read from the build context (``BuildContext``), e.g. the
        encoder's width for the adapter. Fields the context does not declare go to ``context.extra``."""
        return {}

    def gradient_checkpointing_enable(self) -> bool:
        """Recompute activations during backward instead of keeping them; ``False``: not supported."""
        return False


class Encoder(Component):
    """Waveforms in, frames out. Subclasses set ``output_dim``, ``frame_rate`` and ``sampling_rate``."""

    output_dim: int
    frame_rate: float  # output frames per second of audio
    sampling_rate: int = 16000
    stacks_layers: bool = False  # True: ``hidden`` is [B, L, T, C] (every layer kept, ``layer: all``)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        """``audio [B, S]`` float waveforms zero-padded on the right, ``lengths [B]`` in samples."""
        raise NotImplementedError

    def context_fields(self) -> dict[str, Any]:
        return {"encoder_dim": self.output_dim, "encoder_frame_rate": self.frame_rate,
                "sampling_rate": self.sampling_rate, "encoder_layers_stacked": bool(self.stacks_layers)}


class Adapter(Component):
    """Encoder frames -> LLM-width embeddings."""

    output_dim: int
    # True for an adapter fitted on the encoder's inference-mode features (a k-means codebook): the encoder then
    # runs in inference mode in training too, so dropout and SpecAugment masking never change the units
    fitted_on_encoder: bool = False

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


class Fusion(Component):
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

    def decoding_state(self) -> dict[str, Any] | None:
        """The per-row state the last ``fuse`` left for cached decoding, for :mod:`slmzoo.decoding` to carry while
        rows join and leave a running batch: named objects with ``select(index)`` (keep rows, in place) and a
        classmethod ``concat(states)``. ``None`` (the default): the fusion keeps nothing between calls. A fusion
        that overrides :meth:`release` but not this method is decoded in static batches only."""
        return None

    def use_decoding_state(self, state: dict[str, Any]) -> None:
        """Make ``state`` (from :meth:`decoding_state`, maybe cut or joined since) what the next calls read."""


@dataclass
class LMOutput:
    """``logits [B, L, V]`` (``[B, N, V]`` over the decoder's positions for an encoder-decoder LM) and the mean
    cross-entropy over the positions whose label is not -100 (``None`` without labels)."""

    loss: torch.Tensor | None
    logits: torch.Tensor


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [B, L, V]`` predicting ``labels [B, L]`` one position ahead (-100 ignored),
    in float32: what transformers' causal LMs compute."""
    shift = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1).to(logits.device),
                           ignore_index=IGNORE_INDEX)


class LanguageModel(UsesProcessor, Component):
    """A language model and the contract the fusions, the training loop and generation rely on.

    A subclass sets ``hidden_size`` and ``processor`` (the :class:`slmzoo.processing.Processor` the builder
    passes in ``context.processor``: tokenizer, chat format, audio tag) and implements
    :meth:`input_embeddings`, :meth:`decoder_layers`, :meth:`hidden_states` and :meth:`head`. ``forward`` and
    ``generate`` have working defaults built on those four (a greedy or sampled loop with the KV cache that
    ``hidden_states`` returns); transformers-backed LMs override them with transformers' own.
    """

    hidden_size: int
    is_encoder_decoder: bool = False  # True: inputs_embeds feed the encoder, labels are the decoder's targets

    def context_fields(self) -> dict[str, Any]:
        return {"llm": self, "llm_dim": self.hidden_size}

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the weights: fusions create their own weights in it."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    # -- the parts --------------------------------------------------------------------------------------
    def input_embeddings(self) -> nn.Module:  # pragma: no cover - abstract
        """The token embedding module (``[B, L]`` ids -> ``[B, L, D]``). Every lookup goes through it, the
        prompt's and each generated token's, so a forward hook on it sees them all (``cross_attention``)."""
        raise NotImplementedError

    def decoder_layers(self) -> nn.ModuleList:  # pragma: no cover - abstract
        """The transformer blocks, in order (the decoder's for an encoder-decoder LM): in-layer fusions hook them."""
        raise NotImplementedError

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        """``inputs_embeds [B, L, D]`` -> the last layer's states ``[B, L, D]`` (final norm applied) and the KV
        cache (``None`` unless ``use_cache``). ``attention_mask [B, P + L]`` covers the cached positions ``P``
        too; ``position_ids [B, L]`` default to counting real positions from 0."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``hidden [B, L, D]`` -> ``logits [B, L, V]``, including any scaling the model applies to logits."""
        raise NotImplementedError

    def rotate_queries(self, attention: nn.Module, queries: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
        """Queries ``[B, H, L, d]`` rotated as ``attention`` (a module of a decoder layer) rotates its own, given the
        ``position_embeddings`` the layer received (rotary models); default: no rotation. ``adapter_prompt`` uses
        it to let the layer's queries attend to its prompts."""
        return queries

    def with_audio(self, rows: torch.Tensor | None):
        """A context in which the LLM knows which rows of the batch have audio in their prompt (``rows [B]`` bool):
        a LoRA active only with audio (``lora.audio_only``) applies to those. Default: nothing changes."""
        from contextlib import nullcontext

        return nullcontext()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` -> ``[B, L, D]`` through :meth:`input_embeddings`."""
        return self.input_embeddings()(input_ids)

    # -- what the model does with them -------------------------------------------------------------
    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **extra) -> LMOutput:
        """Teacher-forced pass: ``logits [B, L, V]`` and, with ``labels [B, L]``, the next-token loss."""
        if position_ids is None:
            position_ids = default_position_ids(attention_mask)
        hidden, _ = self.hidden_states(inputs_embeds, attention_mask, position_ids=position_ids)
        logits = self.head(hidden)
        return LMOutput(loss=None if labels is None else causal_lm_loss(logits, labels), logits=logits)

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 **unused) -> torch.Tensor:
        """Left-padded ``inputs_embeds [B, L, D]`` -> new token ids ``[B, N]`` (``pad_token_id`` after a row
        ended), decoding with the KV cache of :meth:`hidden_states`. Greedy unless ``do_sample``."""
        stops = (self.formatter.stop_token_ids if eos_token_id is None else
                 ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)))
        return decode_with_cache(self, inputs_embeds, attention_mask, self.head, self.embed, stops,
                                 self.pad_token_id if pad_token_id is None else pad_token_id, max_new_tokens,
                                 do_sample, temperature, top_p)


def decode_with_cache(llm: LanguageModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      head, embed, stops: list[int], pad: int, max_new_tokens: int = 128, do_sample: bool = False,
                      temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """The token loop of :meth:`LanguageModel.generate` over ``llm.hidden_states`` and its KV cache, with the output
    ``head`` (``[B, L, D]`` -> ``[B, L, V]``) and token ``embed`` (``[B, L]`` -> ``[B, L, D]``) given: a caller
    whose vocabulary extends the LLM's (unit tokens) passes its own. Left-padded ``inputs_embeds [B, L, D]`` ->
    new ids ``[B, N]``, ``pad`` after a row stopped."""
    stops = torch.tensor(stops, device=inputs_embeds.device)
    mask = attention_mask.long()
    position_ids = default_position_ids(mask)
    hidden, cache = llm.hidden_states(inputs_embeds, mask, position_ids=position_ids, use_cache=True)
    next_position = position_ids[:, -1:] + 1
    done = torch.zeros(inputs_embeds.shape[0], dtype=torch.bool, device=inputs_embeds.device)
    tokens = []
    for _ in range(max_new_tokens):
        logits = head(hidden[:, -1:]).float()[:, -1]
        token = _pick(logits, do_sample, temperature, top_p)
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        hidden, cache = llm.hidden_states(embed(token[:, None]), mask, position_ids=next_position,
                                          past_key_values=cache, use_cache=True)
        next_position = next_position + 1
    if not tokens:
        return inputs_embeds.new_zeros(inputs_embeds.shape[0], 0, dtype=torch.long)
    return torch.stack(tokens, dim=1)


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` positions counting real tokens from 0 (left padding gets position 1, as transformers does)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """``logits [B, V]`` -> ``[B]``: the argmax, or a sample at ``temperature`` from the ``top_p`` nucleus
    (drawn with ``generator``: a seeded request's own)."""
    if not do_sample:
        return logits.argmax(-1)
    probs = F.softmax(logits / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
