"""The top-level card schema. Which component blocks a card has comes from its architecture (``architecture:``,
default ``speechlm``): :func:`card_model` builds the schema of one architecture's cards from :class:`CardBase` and
the architecture's sections. Component blocks are ``{type: NAME, ...options}``; their options are validated in a
second pass against the options class the component registered (see ``validate.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from slmzoo.registry import DEFAULT_ARCHITECTURE, ArchitectureSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentBlock(BaseModel):
    """``{type: NAME, ...}``; the other keys are the component's options."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="A registered component name (slmzoo list).")


class PromptConfig(Strict):
    audio_tag: str = Field("<|audio|>", description="Special token replaced by each audio's embeddings, in order.")
    chat_template: str | None = Field(
        None,
        description="A built-in format name (chatml, llama2, llama3, vicuna, plain) or a Jinja template; "
        "default: the tokenizer's own, or chatml for the built-in tokenizer.",
    )
    system: str | None = Field(None, description="System prompt placed before the first user turn.")
    user_format: str = Field(
        "{instruction} {audio}",
        description="How a plain-text prompt and its audio form the user turn; {audio} is the audio tag.",
    )
    stop_tokens: list[str] = Field(
        default_factory=list, description="Tokens that also end generation, besides the chat format's end of turn "
        "and the tokenizer's EOS (an imported release's generation_config eos_token_id).")
    tasks: dict[str, str] = Field(
        default_factory=lambda: {"asr": "Transcribe the audio."},
        description="Task name -> instruction used when a data item names no prompt.",
    )
    default_task: str = Field("asr", description="Task used for items that name none.")
    context_format: str = Field(
        "{instruction} Context: {context}",
        description="How a request's context joins a task instruction: the prompt of slmzoo serve's transcriptions "
        "(OpenAI's prompt: earlier text of the recording, spellings, a style to follow); {instruction}, {context}.")

    @field_validator("context_format")
    @classmethod
    def _places_both(cls, value: str) -> str:
        try:
            value.format(instruction="", context="")
        except (KeyError, IndexError, ValueError):
            raise ValueError("only the placeholders {instruction} and {context} may appear (double other braces)") from None
        if "{context}" not in value:
            raise ValueError("must place the context: add {context}")
        return value


class AugmentConfig(Strict):
    speed_perturb: list[float] = Field(default_factory=list, description="Speed factors, e.g. [0.9, 1.1].")
    spec_augment: bool = Field(False, description="SpecAugment-style time/frequency masking on encoder input.")
    noise_snr: tuple[float, float] | None = Field(None, description="Add white noise at an SNR drawn from [lo, hi] dB.")
    volume: tuple[float, float] | None = Field(None, description="Random gain range in dB.")
    noise_prob: float = Field(0.5, ge=0, le=1, description="Share of clips that get noise when noise_snr is set.")
    start_batch: int = Field(
        0, ge=0, description="Batches trained on clean audio before augmentation starts: a model from scratch first "
        "finds the audio, then learns robustness (augmenting from step 0 keeps it on the text prior far longer).")


class TrainConfig(Strict):
    freeze: list[str] = Field(
        default_factory=list,
        description="Components (encoder, adapter, fusion, llm) or parameter-name globs to freeze.",
    )
    trainable: list[str] = Field(
        default_factory=list, description="Parameter-name globs made trainable after freezing (e.g. 'llm.*embed*')."
    )
    max_steps: int = Field(1000, ge=1)
    max_duration: float = Field(60.0, gt=0, description="Seconds of audio per batch (Lhotse max_duration).")
    lr: float = Field(1e-4, gt=0)
    lr_groups: dict[str, float] = Field(
        default_factory=dict, description="Learning rate per component (encoder, adapter, fusion, llm, lora)."
    )
    weight_decay: float = 0.0
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    num_workers: int = Field(0, ge=0)
    num_buckets: int = Field(10, ge=1)
    max_text_tokens: int = Field(256, ge=1, description="Items whose response is longer are skipped.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class CardBase(Strict):
    """What every card has, whatever its architecture; the component sections are added by :func:`card_model`."""

    name: str
    description: str = ""
    paper: str | None = Field(None, description="URL of the paper.")
    year: int | None = None
    published_params: int | None = Field(None, description="Total parameters the paper or model card states.")
    extends: str | None = Field(None, description="A card (name or path) this one overrides.")
    architecture: str = Field(DEFAULT_ARCHITECTURE, description="How the components are assembled: a registered "
                              "architecture (slmzoo list architectures).")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named overrides; every card has tiny.")


HEAD_FIELDS = ("name", "description", "paper", "year", "published_params", "extends", "architecture")


@functools.lru_cache(maxsize=None)
def card_model(architecture: ArchitectureSpec | None) -> type[CardBase]:
    """The pydantic model of the cards of ``architecture``: :class:`CardBase` plus one ``ComponentBlock`` field
    per section (required, or with the section's default block) and the architecture's own ``card_fields``, in
    card order: the head fields, the sections, the architecture's fields, ``prompt``, ``train``, ``presets``.

    ``None`` (an unknown architecture): the base fields only, other keys allowed, so that the rest of a card with
    a misspelt architecture is still checked."""
    if architecture is None:
        return _lenient_card()
    fields: dict[str, Any] = {}
    for name in HEAD_FIELDS:
        info = CardBase.model_fields[name]
        fields[name] = (info.annotation, info)
    for section in architecture.sections:
        description = f"The {section.kind}" + (f": {section.description}" if section.description else "")
        if section.required:
            fields[section.name] = (ComponentBlock, Field(..., description=description))
        else:
            default = dict(section.default or {})
            fields[section.name] = (ComponentBlock | None if not default else ComponentBlock,
                                    Field(default_factory=lambda d=default: ComponentBlock(**d) if d else None,
                                          description=description))
    if architecture.card_fields is not None:
        for name, info in architecture.card_fields.model_fields.items():
            fields[name] = (info.annotation, info)
    for name in ("prompt", "train", "presets"):
        info = CardBase.model_fields[name]
        fields[name] = (info.annotation, info)
    title = "Card" if architecture.name == DEFAULT_ARCHITECTURE else f"Card[{architecture.name}]"
    return create_model(title, __base__=Strict, **fields)


@functools.lru_cache(maxsize=None)
def _lenient_card() -> type[CardBase]:
    class LenientCard(CardBase):
        model_config = ConfigDict(extra="allow", protected_namespaces=())

    return LenientCard


def architecture_of(data: Any) -> ArchitectureSpec | None:
    """The registered architecture a card dict names (``speechlm`` when it names none); ``None`` if unknown."""
    from slmzoo.plugins import registry

    name = data.get("architecture", DEFAULT_ARCHITECTURE) if isinstance(data, dict) else DEFAULT_ARCHITECTURE
    return registry().get_architecture(name) if isinstance(name, str) else None


def component_sections(data: Any) -> tuple[str, ...]:
    """The keys of a card dict that hold component blocks: its architecture's sections or, for an architecture
    nobody registered, every top-level mapping with a ``type``."""
    spec = architecture_of(data)
    if spec is not None:
        return spec.section_names
    return tuple(k for k, v in data.items() if isinstance(v, dict) and "type" in v) if isinstance(data, dict) else ()
