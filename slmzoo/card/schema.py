"""The top-level card schema. Component blocks are ``{type: NAME, ...options}``; their options are
validated in a second pass against the options class the component registered (see ``validate.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SECTION_KINDS = {"encoder": "encoder", "adapter": "adapter", "fusion": "fusion", "llm": "llm"}


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
    tasks: dict[str, str] = Field(
        default_factory=lambda: {"asr": "Transcribe the audio."},
        description="Task name -> instruction used when a data item names no prompt.",
    )
    default_task: str = Field("asr", description="Task used for items that name none.")


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


class Card(Strict):
    name: str
    description: str = ""
    paper: str | None = Field(None, description="URL of the paper.")
    year: int | None = None
    published_params: int | None = Field(None, description="Total parameters the paper or model card states.")
    extends: str | None = Field(None, description="A card (name or path) this one overrides.")
    encoder: ComponentBlock
    adapter: ComponentBlock
    fusion: ComponentBlock = Field(default_factory=lambda: ComponentBlock(type="concat"))
    llm: ComponentBlock
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named overrides; every card has tiny.")
