"""AdamW with a learning rate per parameter group, and warmup followed by cosine, linear or constant decay."""

from __future__ import annotations

import math

import torch

LORA = "lora"  # LoRA weights form a group of their own, whichever component they live in


def group_of(name: str) -> str:
    """``"llm.model.base_model...lora_A.default.weight"`` -> ``"lora"``; otherwise the section prefix."""
    if "lora_" in name:
        return LORA
    return name.split(".", 1)[0]


def param_groups(model: torch.nn.Module, train) -> list[dict]:
    """Trainable parameters grouped by section (``lora`` apart); ``train.lr_groups`` overrides ``train.lr`` per
    group. Biases and norm weights (1-D tensors) get no weight decay, as usual for transformers.
    """
    groups_known = (LORA, *model.sections)
    unknown = set(train.lr_groups) - set(groups_known)
    if unknown:
        raise ValueError(f"train.lr_groups: unknown group(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(groups_known)}")
    buckets: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((group_of(name), param.ndim >= 2), []).append(param)
    groups = []
    for (group, decay), params in sorted(buckets.items()):
        groups.append({"params": params, "name": group, "lr": train.lr_groups.get(group, train.lr),
                       "weight_decay": train.weight_decay if decay else 0.0})
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (see train.freeze / train.trainable)")
    return groups


def make_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, train), betas=(0.9, 0.98), eps=1e-8)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train.warmup_steps, train.max_steps, train.schedule))
