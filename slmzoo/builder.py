"""Card -> :class:`SpeechLM`. The LLM is built first (its width sizes the adapter), then encoder,
adapter and fusion; then the card's freeze policy is applied.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from slmzoo.card.loader import ResolvedCard, load_card
from slmzoo.plugins import registry


@dataclass
class BuildContext:
    """What a component factory may need to know about the others. Filled in build order."""

    card: ResolvedCard
    meta: bool = False  # building on the meta device: no weights are loaded or allocated
    load_weights: bool = True  # False when a checkpoint will supply every weight (from_pretrained)
    llm: Any = None  # the built LanguageModel (its hidden_size, tokenizer, config)
    llm_dim: int | None = None
    encoder_dim: int | None = None
    encoder_frame_rate: float | None = None
    encoder_layers_stacked: bool = False  # encoder returns [B, L, T, C]
    sampling_rate: int = 16000
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def from_config(self) -> bool:
        """Build from the inline config without loading pretrained weights (meta builds, checkpoint loads)."""
        return self.meta or not self.load_weights


def instantiate(spec, options, context: BuildContext, where: str):
    """Build one registered component; non-LLM components get the card's LoRA injected here (LLM wrappers
    apply their own through peft's task wrappers). ``where`` names the card key in errors."""
    module = spec.load_factory()(options, context)
    if spec.kind != "llm" and getattr(options, "lora", None) is not None:
        from slmzoo.lora import add_lora

        add_lora(module, options.lora, where)
    return module


def build_component(section: str, card: ResolvedCard, context: BuildContext):
    kind_name, options = card.component(section)
    return instantiate(registry().get(section, kind_name), options, context, section)


def build(card, meta: bool = False, preset: str | None = None, overrides=None, load_weights: bool = True):
    """Instantiate a card. ``meta=True`` builds on the meta device: real parameter counts, no memory.

    ``load_weights=False`` skips pretrained backbones (a checkpoint will provide every weight).
    """
    from slmzoo.model import SpeechLM

    if not isinstance(card, ResolvedCard):
        card = load_card(card, preset=preset, overrides=overrides)
    context = BuildContext(card=card, meta=meta, load_weights=load_weights)
    device = torch.device("meta") if meta else contextlib.nullcontext()
    with device:
        llm = build_component("llm", card, context)
        context.llm, context.llm_dim = llm, llm.hidden_size
        encoder = build_component("encoder", card, context)
        context.encoder_dim, context.encoder_frame_rate = encoder.output_dim, encoder.frame_rate
        context.sampling_rate = encoder.sampling_rate
        context.encoder_layers_stacked = bool(getattr(encoder, "stacks_layers", False))
        adapter = build_component("adapter", card, context)
        fusion = build_component("fusion", card, context)
    model = SpeechLM(card=card, encoder=encoder, adapter=adapter, fusion=fusion, llm=llm)
    model.apply_train_policy()
    return model
