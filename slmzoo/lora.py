"""LoRA for any component, through peft: the options (torch-free) and how a module gets its adapters.

The LLM wrappers apply LoRA themselves (peft's causal/seq2seq wrappers); encoders and adapters that
declare a ``lora`` option get it from the builder with :func:`add_lora`. A LoRA'd module's base weights
are frozen by peft, its ``lora_*`` weights train, whatever ``train.freeze`` says of the component.
"""

from __future__ import annotations

from pydantic import Field

from slmzoo.registry import ComponentOptions


class LoraOptions(ComponentOptions):
    """LoRA through peft (``LoraConfig``)."""

    r: int = Field(8, ge=1, description="Rank.")
    alpha: float = Field(16, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0.0, le=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Module names (or suffixes) to adapt.")


class LoraTargetError(ValueError):
    pass


def linear_names(module) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def check_targets(module, lora: LoraOptions, where: str) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise LoraTargetError(f"{where}.lora.target_modules: no module named {', '.join(missing)} here "
                              f"(linear layers: {', '.join(sorted(linear_names(module)))})")


def peft_config(lora: LoraOptions, **extra):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), **extra)


def add_lora(module, lora: LoraOptions, where: str):
    """Inject LoRA adapters into ``module`` in place (base weights frozen); returns it."""
    from peft import inject_adapter_in_model

    check_targets(module, lora, where)
    return inject_adapter_in_model(peft_config(lora), module)
