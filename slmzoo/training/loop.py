"""The training loop on Accelerate: one process on CPU or GPU, or DDP/FSDP under ``accelerate launch``
(the Accelerate config decides; there is no distribution code here beyond sharding the sampler by rank,
gathering checkpoints and letting every rank of a sharded model validate).

One step = ``train.grad_accum`` batches of ``train.max_duration`` seconds, then clipping, an AdamW step and a
scheduler step. Resume restores weights, optimizer, scheduler, RNG and the number of batches consumed, so the
losses after ``--resume`` equal those of an uninterrupted run (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmzoo.data import DataIssues, prompt_and_response, SpeechDataset, eval_cuts, make_loader, make_sampler, training_cuts
from slmzoo.training import checkpoints as ckpt
from slmzoo.training.metrics import MetricsLogger, truncate_metrics
from slmzoo.training.optim import lr_factor, make_optimizer, make_scheduler

log = logging.getLogger("slmzoo.train")
PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
TENSOR_KEYS = ("audio", "audio_lens", "input_ids", "attention_mask", "labels")


class ResumeError(RuntimeError):
    pass


@dataclass
class RunOptions:
    train: list[str]  # manifests, "path[:weight]"
    out: Path
    val: str | None = None
    resume: bool = False
    strict: bool = False
    progress: bool = True
    bucketing: bool = True  # False: random batches (the benchmark's baseline)
    val_limit: int | None = 200  # utterances decoded for the validation WER
    extra: dict = field(default_factory=dict)


def _enable_gradient_checkpointing(model) -> None:
    for module in (model.llm.base if hasattr(model.llm, "base") else None, model.encoder):
        for method in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):  # new name first
            if module is not None and hasattr(module, method):
                getattr(module, method)()
                break


@contextlib.contextmanager
def _root_unsharded(model, sharded: bool):
    """Under FSDP, the parameters of the root's own group (those in no wrapped submodule: encoder, adapter or
    embeddings unless the wrap policy covers them) are gathered only inside the root's ``forward``; decoding
    calls ``generate``, so gather them around it. Wrapped submodules gather themselves when called."""
    if not sharded:
        yield
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FSDPModule):  # FSDP2: fully_shard wrapped the model in place
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:  # FSDP1: the model sits inside a FullyShardedDataParallel wrapper
        with FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False):
            yield


def validate(model, dataset: SpeechDataset, cuts: list, limit: int | None, batch_size: int = 32) -> dict:
    """Loss (teacher-forced, no augmentation) and WER / CER (greedy decoding) on the validation cuts."""
    from slmzoo.evaluation import score, transcribe

    cuts = cuts[:limit] if limit else cuts
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(cuts), batch_size):
            batch = dataset[(0, cuts[start:start + batch_size])]
            if "audio" not in batch:
                continue
            out = model({k: batch[k].to(model.device) for k in TENSOR_KEYS})
            total += float(out.loss) * out.num_tokens
            count += out.num_tokens
    # Stop decoding a little past the longest reference: an untrained model would ramble to the limit.
    longest = max(len(model.tokenizer(prompt_and_response(c)[2]).input_ids) for c in cuts)
    records, _ = transcribe(model, cuts, batch_size, max_new_tokens=longest + 8)
    metrics = score(records)
    model.train()
    return {"val_loss": total / max(count, 1), "val_wer": metrics["wer"], "val_cer": metrics["cer"]}


def train(card, options: RunOptions) -> dict:
    """Train ``card`` (a ResolvedCard) into ``options.out``; returns a summary of the run."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    from slmzoo.builder import build

    cfg = card.card.train
    out = Path(options.out)
    from accelerate.state import AcceleratorState

    # A second run in one process (tests, notebooks) may change the precision; the state is a singleton.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=PRECISION[cfg.precision], gradient_accumulation_steps=cfg.grad_accum)
    is_main, rank = accelerator.is_main_process, accelerator.process_index
    resume_from = ckpt.latest_checkpoint(out) if options.resume else None
    if not options.resume and ckpt.latest_checkpoint(out) is not None:
        raise ResumeError(f"{out} already has checkpoints; pass --resume to continue it, or choose another --out")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporary(out)

    set_seed(cfg.seed)
    model = build(card)
    if resume_from is not None:  # into the whole model, before FSDP shards it
        ckpt.load_model_weights(resume_from, model)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    model.train()
    saved_keys = ckpt.weight_keys(model)  # names before wrapping: FSDP1 renames parameters
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    # A sharded model runs forward only with every rank taking part: then all ranks validate (the same cuts).
    sharded = accelerator.distributed_type == DistributedType.FSDP
    log.info("accelerate: %s, %d process(es), device %s, precision %s", accelerator.distributed_type.value,
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision)

    issues = DataIssues(strict=options.strict)
    step, consumed = 0, 0
    if resume_from is not None:
        state = ckpt.load_training_state(resume_from, model, optimizer, scheduler, rank)
        step, consumed = state["step"], state["batches_consumed"]
        issues.counts.update(state.get("issues", {}))
        log.info("resumed from %s (step %d, %d batches consumed)", resume_from, step, consumed)
    elif options.resume:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
    if is_main:
        truncate_metrics(out, step)
    logger = MetricsLogger(out, start_step=step, enabled=is_main)

    dataset = SpeechDataset(raw.formatter, raw.sampling_rate, cfg.max_text_tokens, cfg.augment, cfg.seed,
                            options.strict)
    sampler = make_sampler(training_cuts(options.train, issues, cfg.seed), cfg.max_duration, options.bucketing,
                           cfg.num_buckets, shuffle=True, seed=cfg.seed, world_size=accelerator.num_processes,
                           rank=rank)
    batches = iter(make_loader(dataset, sampler, skip=consumed, num_workers=cfg.num_workers, seed=cfg.seed))
    val_cuts = eval_cuts(options.val, DataIssues(strict=options.strict)) if options.val else None
    val_set = SpeechDataset(raw.formatter, raw.sampling_rate, cfg.max_text_tokens, None, cfg.seed, options.strict)

    def next_batch():
        nonlocal consumed
        while True:
            batch = next(batches)
            consumed += 1
            issues.merge(batch["issues"])
            if "audio" in batch:
                return batch

    def save():
        state = {"batches_consumed": consumed, "issues": dict(issues.counts)}
        accelerator.wait_for_everyone()
        weights = accelerator.get_state_dict(model)  # collective: gathers FSDP shards onto the main process
        # Collective under FSDP; otherwise the main process alone copies the optimizer state out.
        optimizer_state = ckpt.optimizer_state(model, optimizer) if sharded or is_main else None
        folder = ckpt.save_checkpoint(out, step, raw, optimizer_state, scheduler, state, cfg.keep_last, rank,
                                      is_main, weights=weights, keys=saved_keys)
        accelerator.wait_for_everyone()
        if not is_main:
            ckpt.save_rng_other_rank(out, step, rank)
        return folder

    progress = _Progress(cfg.max_steps, step, enabled=options.progress and is_main)
    params = [p for p in model.parameters() if p.requires_grad]
    start_time, window = time.perf_counter(), {"loss": 0.0, "n": 0, "audio": 0.0, "t": time.perf_counter()}
    total_audio = 0.0
    try:
        while step < cfg.max_steps:
            lr = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.max_steps, cfg.schedule)
            step_loss, grad_norm, step_audio = 0.0, None, 0.0
            for _ in range(cfg.grad_accum):
                batch = next_batch()
                step_audio += batch["duration"]
                with accelerator.accumulate(model):
                    loss = model({k: batch[k].to(accelerator.device) for k in TENSOR_KEYS}).loss
                    if not torch.isfinite(loss):
                        # A bad batch must not poison the weights: skip its update, count it, keep going.
                        issues.report(",".join(batch["ids"][:3]), "non-finite loss", "nan_loss")
                        loss = loss.nan_to_num(0.0) * 0.0
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip:
                        grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += float(loss.detach()) / cfg.grad_accum
            scheduler.step()
            step += 1
            step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean"))
            window["loss"] += step_loss
            window["n"] += 1
            window["audio"] += step_audio
            total_audio += step_audio
            progress.update(step, step_loss, lr, total_audio / max(time.perf_counter() - start_time, 1e-9))
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                row = {"step": step, "loss": window["loss"] / window["n"], "lr": lr,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "audio_sec_per_sec": window["audio"] / max(now - window["t"], 1e-9),
                       "elapsed": now - start_time, "skipped": issues.total}
                logger.log(row)
                window = {"loss": 0.0, "n": 0, "audio": 0.0, "t": now}
            if val_cuts and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                if is_main or sharded:
                    with _root_unsharded(model, sharded):
                        row = {"step": step, **validate(raw, val_set, val_cuts, options.val_limit)}
                    logger.log(row)  # the main process's logger alone writes
                    if is_main:
                        progress.note(f"step {step}: val_loss {row['val_loss']:.3f} val_wer {row['val_wer']:.3f}")
                accelerator.wait_for_everyone()
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                save()
    finally:
        progress.close()
        logger.close()
    if issues.total:
        log.warning("skipped %d bad item(s): %s", issues.total, dict(issues.counts))
    return {"step": step, "checkpoint": str(ckpt.latest_checkpoint(out)), "issues": issues.summary(),
            "wall_seconds": time.perf_counter() - start_time, "audio_seconds": total_audio, "is_main": is_main}


class _Progress:
    """Rich progress bar: step, loss, lr, audio hours per second, ETA."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                                       "{task.fields[hps]:.4f} audio h/s"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, completed=start, loss=math.nan, lr=0.0, hps=0.0)
        self.bar.start()

    def update(self, step: int, loss: float, lr: float, audio_per_sec: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, lr=lr, hps=audio_per_sec / 3600)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
