"""LoRA for any component, through peft: the options (torch-free) and how a module gets its adapters.

The LLM wrappers apply LoRA themselves (peft's causal/seq2seq wrappers); encoders and adapters that
declare a ``lora`` option get it from the builder with :func:`add_lora`. A LoRA'd module's base weights
are frozen by peft, its ``lora_*`` weights train, whatever ``train.freeze`` says of the component.
"""

from __future__ import annotations

from contextlib import contextmanager

from pydantic import Field

from slmzoo.registry import ComponentOptions


class LoraOptions(ComponentOptions):
    """LoRA through peft (``LoraConfig``)."""

    r: int = Field(8, ge=1, description="Rank.")
    alpha: float = Field(16, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0.0, le=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Module names (or suffixes) to adapt.")
    audio_only: bool = Field(False, description="LLM LoRA: active only on rows whose prompt has audio, so text-only "
                             "rows run the plain LLM (Granite Speech's modality-specific LoRA).")


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


class RowGate:
    """Turns a peft module's LoRA on for some rows of a batch and off for the others (``audio_only``): a forward hook
    on every ``lora_B`` multiplies the LoRA branch's output ``[B, ..., D]`` by the row's 0 or 1. peft's own mixed
    batches (``adapter_names``) refuse training mode; this works in both. Before any :meth:`rows` the LoRA is off."""

    def __init__(self, module):
        from peft.tuners.lora import LoraLayer

        self.active = None  # [B] bool, the rows the LoRA applies to
        self.handles = [branch.register_forward_hook(self._gate) for layer in module.modules()
                        if isinstance(layer, LoraLayer) for branch in layer.lora_B.values()]

    def _gate(self, _module, _inputs, output):
        active = self.active
        if active is None:
            return output * 0
        if active.shape[0] != output.shape[0]:
            raise ValueError(f"LoRA row gate: {active.shape[0]} rows given, the batch has {output.shape[0]}")
        return output * active.to(output.dtype).view(-1, *([1] * (output.dim() - 1)))

    @contextmanager
    def rows(self, active):
        """``active [B]`` (bool): the rows the LoRA applies to while the block runs. With autograd on they stay set
        after it, until the next block: gradient checkpointing recomputes the forward during ``backward``."""
        import torch

        previous, self.active = self.active, active
        try:
            yield
        finally:
            if not torch.is_grad_enabled():
                self.active = previous
