"""A third-party-style plugin for tests: a new component kind (``gain``), one component of it, and an architecture
(``gained_speechlm``) that puts a gain between the adapter and the fusion. Nothing here touches the kernel."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slmzoo import hookimpl
from slmzoo.components import Component
from slmzoo.model import SpeechLM
from slmzoo.registry import ArchitectureSpec, ComponentKind, ComponentOptions, ComponentSpec, Section


class Gain(Component):
    """The contract of the ``gain`` kind: ``embeds [T, D]`` -> ``[T, D]``."""

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ScalarGainOptions(ComponentOptions):
    init: float = Field(1.0, description="Initial gain.")


class ScalarGain(Gain):
    def __init__(self, options, context):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(options.init)))

    def forward(self, embeds):
        return embeds * self.scale.to(embeds.dtype)


class GainSettings(BaseModel):
    """Top-level card keys the architecture adds (``ArchitectureSpec.card_fields``)."""

    model_config = ConfigDict(extra="forbid")
    gain_limit: float | None = Field(None, gt=0, description="Clamp the audio embeddings to +-limit after the gain.")


class GainedSpeechLM(SpeechLM):
    """``SpeechLM`` whose audio embeddings pass through the ``gain`` section before the fusion."""

    def encode_audio(self, audio, audio_lens):
        embeds, adapted = super().encode_audio(audio, audio_lens)
        limit = self.card.validated.gain_limit if self.card is not None else None
        gained = [self.gain(e) for e in embeds]
        return [g.clamp(-limit, limit) if limit else g for g in gained], adapted


TOY = ArchitectureSpec(
    name="gained_speechlm", description="speechlm with a gain on the audio embeddings (a test architecture)",
    sections=(Section("encoder", "encoder"), Section("adapter", "adapter"), Section("gain", "gain"),
              Section("fusion", "fusion", required=False, default={"type": "concat"}), Section("llm", "llm")),
    build_order=("llm", "encoder", "adapter", "gain", "fusion"),
    model="tests.toy_architecture:GainedSpeechLM",
    card_fields=GainSettings,
)


@hookimpl
def slmzoo_register_components(register):
    register(ComponentKind("gain", "Scales audio embeddings (a test kind).", base="tests.toy_architecture:Gain"))
    register(ComponentSpec(kind="gain", name="scalar_gain", description="one learned scale", options=ScalarGainOptions,
                           factory="tests.toy_architecture:ScalarGain", example={"init": 0.5}))
    register(TOY)
