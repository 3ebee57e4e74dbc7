"""Card -> model. The card's architecture says which sections exist, the order they are built in and the model
class; the builder builds each section's registered component in that order (``speechlm``: the LLM first, as its
width sizes the adapter), hands the processor to the model, and applies the card's freeze policy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from slmzoo.card.loader import ResolvedCard, load_card
from slmzoo.card.validate import resolve_block


class ComponentTypeError(TypeError):
    """A component that does not implement the contract class of its kind."""


@dataclass
class BuildContext:
    """What a component factory may know about the others, filled in build order: each built component publishes
    its :meth:`~slmzoo.components.Component.context_fields` (the first of each name wins; names not declared here
    go to ``extra``). ``processor``: the tokenizer, chat format and audio settings."""

    card: ResolvedCard | None
    meta: bool = False  # building on the meta device: no weights are loaded or allocated
    load_weights: bool = True  # False when a checkpoint will supply every weight (from_pretrained)
    processor: Any = None
    llm: Any = None  # the built LanguageModel (its hidden_size, processor, config)
    llm_dim: int | None = None
    encoder_dim: int | None = None
    encoder_frame_rate: float | None = None
    encoder_layers_stacked: bool = False  # encoder returns [B, L, T, C]
    sampling_rate: int = 16000
    components: dict[str, Any] = field(default_factory=dict)  # section -> built component
    extra: dict[str, Any] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)  # fields components have set

    @property
    def from_config(self) -> bool:
        """Build from the inline config without loading pretrained weights (meta builds, checkpoint loads)."""
        return self.meta or not self.load_weights

    def build(self, spec, options, where: str):
        """Build one registered component (``where`` names its card key in errors): it must subclass its kind's
        contract class. The card's ``lora`` is injected here unless the component applies it itself (the LLM
        wrappers use peft's task wrappers)."""
        module = spec.load_factory()(options, self)
        from slmzoo.plugins import registry

        kind = registry().kinds.get(spec.kind)
        if kind is not None and not isinstance(module, base := kind.load_base()):
            raise ComponentTypeError(f"{where}: {spec.kind} {spec.name!r} (plugin {spec.provider}) built a "
                                     f"{type(module).__name__}, which does not subclass {base.__module__}."
                                     f"{base.__name__}, the contract of kind {spec.kind!r}")
        if getattr(options, "lora", None) is not None and not getattr(module, "applies_own_lora", False):
            from slmzoo.lora import add_lora

            add_lora(module, options.lora, where)
        return module

    def build_block(self, kind: str, block: dict, where: str):
        """Build a component from a card block (``{type: NAME, ...options}``), e.g. one nested in another
        component's options (a ``multi`` encoder's ``encoders``)."""
        spec, options = resolve_block(kind, block)
        return self.build(spec, options, where)

    def build_section(self, section: str):
        """Build the component of one of the card's sections and publish its context fields (``None`` for an
        optional section the card leaves out)."""
        if section not in self.card.options:
            return None
        kind = self.card.spec.section(section).kind
        name, options = self.card.component(section)
        from slmzoo.plugins import registry

        module = self.build(registry().get(kind, name), options, section)
        self.publish(section, module)
        return module

    def publish(self, section: str, module) -> None:
        """Record a built component and the fields it offers to those built after it (first one wins)."""
        self.components[section] = module
        declared = {f.name for f in fields(self)}
        for key, value in module.context_fields().items():
            if key in self.published:
                continue
            self.published.add(key)
            if key in declared:
                setattr(self, key, value)
            else:
                self.extra[key] = value


def context_or_default(context: BuildContext | None) -> BuildContext:
    """``context``, or a bare one (no card, weights loaded) for a component built on its own, as tests do."""
    return context if context is not None else BuildContext(card=None)


def build(card, meta: bool = False, preset: str | None = None, overrides=None, load_weights: bool = True,
          processor=None):
    """Instantiate a card. ``meta=True`` builds on the meta device: real parameter counts, no memory.

    ``load_weights=False`` skips pretrained backbones (a checkpoint will provide every weight). ``processor``:
    one already loaded (a saved model's); default: the card's."""
    if not isinstance(card, ResolvedCard):
        card = load_card(card, preset=preset, overrides=overrides)
    model_class = card.spec.load_model_class()
    # Components read hf-hub: / local-dir: backbone sources from local folders; the model keeps the card as written.
    local = _with_local_sources(card, weights=load_weights and not meta)
    if processor is None:
        from slmzoo.processing import card_processor

        processor = card_processor(local, meta=meta)
    context = BuildContext(card=local, meta=meta, load_weights=load_weights, processor=processor)
    with torch.device("meta") if meta else contextlib.nullcontext():
        components = model_class.build_components(context)
    if processor is not None and "sampling_rate" in context.published:
        processor.audio = type(processor.audio)(sampling_rate=context.sampling_rate,
                                                channels=processor.audio.channels)  # the built encoder decides
    model = model_class(card=local, processor=processor, **components)
    model.card = card
    model.apply_train_policy()
    return model


def _with_local_sources(card: ResolvedCard, weights: bool) -> ResolvedCard:
    from slmzoo.card.loader import load_resolved
    from slmzoo.hub.sources import localize

    data = localize(card.data, weights=weights)
    if data is None:
        return card
    local = load_resolved(data, source=card.source)
    local.preset = card.preset
    return local
