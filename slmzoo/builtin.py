"""The kernel's own plugin: the four component kinds of speech LLMs and the ``speechlm`` architecture.

Registered through the same hook a third-party plugin uses (``slmzoo_register_components``), first, and never
disabled: every card without an ``architecture:`` key is a ``speechlm``. A plugin adds kinds (``codec``) and
architectures (``duplex_s2s``) exactly like this.
"""

from __future__ import annotations

from slmzoo.hookspecs import hookimpl
from slmzoo.registry import DEFAULT_ARCHITECTURE, ArchitectureSpec, ComponentKind, Section

KINDS = (
    ComponentKind("encoder", "Waveforms in, frames out: audio [B, S] -> hidden [B, T, C] with lengths.",
                  base="slmzoo.components:Encoder"),
    ComponentKind("adapter", "Encoder frames -> LLM-width embeddings [B, T', D] (or discrete unit ids).",
                  base="slmzoo.components:Adapter"),
    ComponentKind("fusion", "Puts audio embeddings and the tokenized prompt together for the LLM.",
                  base="slmzoo.components:Fusion"),
    ComponentKind("llm", "A language model: embeddings, decoder layers, hidden states, output head, cached "
                  "generation.", base="slmzoo.components:LanguageModel"),
)

SPEECHLM = ArchitectureSpec(
    name=DEFAULT_ARCHITECTURE,
    description="Speech understanding: encoder -> adapter -> fusion -> LLM -> text (SALM, Qwen-Audio, BESTOW, "
                "SALMONN, ...).",
    sections=(
        Section("encoder", "encoder", description="The audio encoder."),
        Section("adapter", "adapter", description="Maps encoder frames into the LLM width."),
        Section("fusion", "fusion", required=False, default={"type": "concat"},
                description="How audio embeddings meet the prompt; default: concat."),
        Section("llm", "llm", description="The language model."),
    ),
    build_order=("llm", "encoder", "adapter", "fusion"),  # the LLM's width sizes the adapter and fusion
    model="slmzoo.model:SpeechLM",
)


@hookimpl
def slmzoo_register_components(register):
    for kind in KINDS:
        register(kind)
    register(SPEECHLM)
