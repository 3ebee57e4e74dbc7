"""Vocoder specs: the ``vocoder`` kind, the ``unit_hifigan`` component and the ``unit_speechlm`` architecture.

Imports no torch; implementations load when a model is built.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.builtin import SPEECHLM
from slmzoo.registry import ArchitectureSpec, ComponentKind, ComponentOptions, ComponentSpec, Section

VOCODER = ComponentKind("vocoder", "A frozen unit vocoder: discrete speech units [B, T] -> waveform [B, S] at its "
                        "sampling rate.", base="slmzoo_plugins.vocoder.components:Vocoder")


class UnitHifiGanOptions(ComponentOptions):
    """The unit HiFi-GAN of speech resynthesis (fairseq's CodeHiFiGANVocoder) as transformers'
    ``SeamlessM4TCodeHifiGan``."""

    pretrained: str | None = Field(None, description="Hub id or local folder of a SeamlessM4TCodeHifiGan "
                                   "checkpoint (save_pretrained); omit for random weights from config.")
    config: dict[str, Any] | None = Field(None, description="Inline SeamlessM4TConfig vocoder fields "
                                          "(unit_hifi_gan_vocab_size, unit_embed_dim, upsample_rates, ...).")
    duration_prediction: bool = Field(True, description="Collapse repeated units and predict each one's duration "
                                      "(fairseq's dur_prediction, for deduplicated units); false: one frame a unit.")
    speaker: int = Field(0, ge=0, description="Speaker embedding row (a multi-speaker vocoder).")
    language: int = Field(0, ge=0, description="Language embedding row (SeamlessM4T's vocoder).")


UNIT_SPEECHLM = ArchitectureSpec(
    name="unit_speechlm",
    description="speechlm whose LLM also writes discrete speech units (token_space with output_units) and a vocoder "
                "that turns them into speech: SpeechGPT, VoxtLM, SPIRIT-LM.",
    sections=(*(s if s.name != "fusion" else Section(
        "fusion", "fusion", required=False, default={"type": "token_space", "output_units": True},
        description="Units as tokens in and out; default: token_space with output_units.")
        for s in SPEECHLM.sections),
              Section("vocoder", "vocoder", description="Turns the speech units the LLM writes into a waveform.")),
    build_order=(*SPEECHLM.order, "vocoder"),
    model="slmzoo_plugins.vocoder.model:UnitSpeechLM",
)


@hookimpl
def slmzoo_register_components(register):
    register(VOCODER)
    register(ComponentSpec(
        kind="vocoder", name="unit_hifigan", description="Unit HiFi-GAN (speech resynthesis; transformers "
        "SeamlessM4TCodeHifiGan): unit embeddings, duration predictor, HiFi-GAN generator.",
        options=UnitHifiGanOptions, factory="slmzoo_plugins.vocoder.unit_hifigan:UnitHifiGan",
        example={"config": {"unit_hifi_gan_vocab_size": 16, "unit_embed_dim": 8, "upsample_initial_channel": 16,
                            "upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8], "resblock_kernel_sizes": [3],
                            "resblock_dilation_sizes": [[1, 3]], "spkr_embed_dim": 0, "lang_embed_dim": 0,
                            "vocoder_num_spkrs": 1, "vocoder_num_langs": 1}}))
    register(UNIT_SPEECHLM)
