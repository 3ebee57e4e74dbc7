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

from slmzoo.data import DataIssues, eval_cuts, make_loader, make_sampler, training_cuts
from slmzoo.training import checkpoints as ckpt
from slmzoo.training.metrics import MetricsLogger, truncate_metrics
from slmzoo.training.optim import lr_factor, make_optimizer, make_scheduler

log = logging.getLogger("slmzoo.train")
PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


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
    init: Path | None = None  # a saved-model folder whose weights the run starts from (fine-tuning)
    extra: dict = field(default_factory=dict)


def tensors(batch: dict, device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device``; bookkeeping entries (ids, issues, duration) stay behind."""
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


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


def skips_layers(model: torch.nn.Module) -> bool:
    """Whether a part of ``model`` drops layers at random in training (a transformers config's ``layerdrop`` or
    ``*_layerdrop``: Parakeet's FastConformer, HuBERT and wav2vec2 default to 0.1). Each rank then leaves other
    parameters without a gradient, and DDP must look for them (``find_unused_parameters``) or the ranks'
    all-reduces mismatch (gloo: "Received data size doesn't match expected size")."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}.values()
    fields = (c if isinstance(c, dict) else vars(c) for c in configs)  # BEATs keeps its config as a dict
    return any(isinstance(value, (int, float)) and value > 0 for config in fields
               for key, value in config.items() if key == "layerdrop" or key.endswith("_layerdrop"))


def validate(model, dataset, cuts: list, limit: int | None, batch_size: int = 32) -> dict:
    """Loss (teacher-forced, no augmentation) on the validation cuts, plus the model's own decoding metrics
    (``decode_metrics``: greedy WER / CER for text models)."""
    cuts = cuts[:limit] if limit else cuts
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(cuts), batch_size):
            batch = dataset[(0, cuts[start:start + batch_size])]
            if "audio" not in batch:
                continue
            out = model(tensors(batch, model.device))
            total += float(out.loss) * out.num_tokens
            count += out.num_tokens
        metrics = model.decode_metrics(cuts, batch_size)
    model.train()
    return {"val_loss": total / max(count, 1), **metrics}


@dataclass
class Run:
    """A training run once set up: the prepared model and optimizer, the data, and where it stands."""

    cfg: object  # the card's TrainConfig
    options: RunOptions
    accelerator: object
    model: torch.nn.Module  # as prepared by Accelerate (wrapped under DDP / FSDP)
    raw: torch.nn.Module  # the unwrapped model
    optimizer: object
    scheduler: object
    saved_keys: set[str] | None  # weight names a checkpoint keeps, taken before wrapping
    issues: DataIssues
    batches: object  # iterator over training batches
    val_cuts: list | None
    val_set: object
    logger: MetricsLogger
    sharded: bool
    step: int = 0
    consumed: int = 0  # batches drawn from the loader, bad ones included (resume skips as many)
    total_audio: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def out(self) -> Path:
        return Path(self.options.out)


def initialise(model, folder: Path) -> None:
    """A fine-tuning run's start: the weights of a saved model (checked against its ``slmzoo.json``) into ``model``.
    Every tensor must fit by name and shape; tensors it lacks (a trainable-only save's backbones) keep the card's."""
    from slmzoo import saving

    saving.verify(folder)
    missing = saving.load_state(model, saving.read_weights(folder), strict=False, where=f"--init {folder}")
    log.info("initialised from %s%s", folder,
             f" ({len(missing)} tensor(s) it does not hold kept from the card's own sources)" if missing else "")


def setup(card, options: RunOptions) -> Run:
    """Accelerator, model (resumed weights loaded before wrapping), optimizer, scheduler, data and logger."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed

    from slmzoo.builder import build

    cfg, out = card.train, Path(options.out)
    # A second run in one process (tests, notebooks) may change the precision; the state is a singleton.
    AcceleratorState._reset_state()
    ddp = DistributedDataParallelKwargs()  # set once the model is built (see skips_layers), read by prepare
    accelerator = Accelerator(mixed_precision=PRECISION[cfg.precision], gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[ddp])
    is_main, rank = accelerator.is_main_process, accelerator.process_index
    resume_from = ckpt.latest_checkpoint(out) if options.resume else None
    if not options.resume and ckpt.latest_checkpoint(out, intact=False) is not None:
        raise ResumeError(f"{out} already has checkpoints; pass --resume to continue it, or choose another --out")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporary(out)

    set_seed(cfg.seed)
    model = build(card)
    if resume_from is not None:  # into the whole model, before FSDP shards it
        ckpt.load_model_weights(resume_from, model)
    elif options.init is not None:
        initialise(model, options.init)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    ddp.find_unused_parameters = skips_layers(model)
    saved_keys = ckpt.weight_keys(model)  # names before wrapping: FSDP1 renames parameters
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    log.info("accelerate: %s, %d process(es), device %s, precision %s", accelerator.distributed_type.value,
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision)

    issues = DataIssues(strict=options.strict)
    step, consumed = 0, 0
    if resume_from is not None:
        state = ckpt.load_training_state(resume_from, prepared, optimizer, scheduler, rank)
        step, consumed = state["step"], state["batches_consumed"]
        issues.counts.update(state.get("issues", {}))
        log.info("resumed from %s (step %d, %d batches consumed)", resume_from, step, consumed)
    elif options.resume:
        log.info("--resume: no intact checkpoint in %s yet, starting from scratch", out)
    if is_main:
        truncate_metrics(out, step)

    sampler = make_sampler(training_cuts(options.train, issues, cfg.seed), cfg.max_duration, options.bucketing,
                           cfg.num_buckets, shuffle=True, seed=cfg.seed, world_size=accelerator.num_processes,
                           rank=rank)
    dataset = model.training_dataset(cfg, augment=True, strict=options.strict)
    batches = iter(make_loader(dataset, sampler, skip=consumed, num_workers=cfg.num_workers, seed=cfg.seed))
    val_cuts = eval_cuts(options.val, DataIssues(strict=options.strict)) if options.val else None
    return Run(cfg=cfg, options=options, accelerator=accelerator, model=prepared, raw=accelerator.unwrap_model(prepared),
               optimizer=optimizer, scheduler=scheduler, saved_keys=saved_keys, issues=issues, batches=batches,
               val_cuts=val_cuts, val_set=model.training_dataset(cfg, augment=False, strict=options.strict),
               logger=MetricsLogger(out, start_step=step, enabled=is_main),
               # A sharded model runs forward only with every rank taking part: then all ranks validate.
               sharded=accelerator.distributed_type == DistributedType.FSDP, step=step, consumed=consumed)


def _next_batch(run: Run) -> dict:
    """The next batch with audio (a batch whose every item was bad is counted and skipped)."""
    while True:
        batch = next(run.batches)
        run.consumed += 1
        run.issues.merge(batch["issues"])
        if "audio" in batch:
            return batch


def train_step(run: Run, params: list) -> dict:
    """One optimizer step over ``train.grad_accum`` batches: clipping, AdamW, scheduler. Returns the step's mean
    loss (over processes), its gradient norm, learning rate and seconds of audio."""
    cfg, accelerator = run.cfg, run.accelerator
    lr = cfg.lr * lr_factor(run.step, cfg.warmup_steps, cfg.max_steps, cfg.schedule)
    step_loss, grad_norm, step_audio, real, padded = 0.0, None, 0.0, 0, 0
    parts: dict[str, float] = {}  # the named parts of the loss (ModelOutput.losses), e.g. text and audio
    for _ in range(cfg.grad_accum):
        batch = _next_batch(run)
        step_audio += batch["duration"]
        if "audio_lens" in batch:  # real vs computed samples: how much of the batch is padding
            real += int(batch["audio_lens"].sum())
            padded += batch["audio"].numel()
        with accelerator.accumulate(run.model):
            out = run.model(tensors(batch, accelerator.device))
            loss = out.loss
            for name, part in out.losses.items():
                parts[name] = parts.get(name, 0.0) + float(part.detach()) / cfg.grad_accum
            if not torch.isfinite(loss):
                # A bad batch must not poison the weights: skip its update, count it, keep going.
                run.issues.report(",".join(batch["ids"][:3]), "non-finite loss", "nan_loss")
                loss = loss.nan_to_num(0.0) * 0.0
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        step_loss += float(loss.detach()) / cfg.grad_accum
    run.scheduler.step()
    run.step += 1
    run.total_audio += step_audio
    step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean"))
    return {"loss": step_loss, "grad_norm": None if grad_norm is None else float(grad_norm), "lr": lr,
            "audio": step_audio, "real_samples": real, "padded_samples": padded, "losses": parts}


def save(run: Run) -> Path:
    """A checkpoint of the current step (collective: every process calls it)."""
    accelerator = run.accelerator
    state = {"batches_consumed": run.consumed, "issues": dict(run.issues.counts)}
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(run.model)  # collective: gathers FSDP shards onto the main process
    # Collective under FSDP; otherwise the main process alone copies the optimizer state out.
    optimizer_state = ckpt.optimizer_state(run.model, run.optimizer) if run.sharded or run.is_main else None
    folder = ckpt.save_checkpoint(run.out, run.step, run.raw, optimizer_state, run.scheduler, state, run.cfg.keep_last,
                                  accelerator.process_index, run.is_main, weights=weights, keys=run.saved_keys)
    accelerator.wait_for_everyone()
    if not run.is_main:
        ckpt.save_rng_other_rank(run.out, run.step, accelerator.process_index)
    return folder


class _Window:
    """Loss and audio seconds since the last log row."""

    def __init__(self):
        self.loss, self.n, self.audio, self.start = 0.0, 0, 0.0, time.perf_counter()
        self.real, self.padded = 0, 0
        self.parts: dict[str, float] = {}

    def add(self, stats: dict) -> None:
        self.loss += stats["loss"]
        for name, value in stats.get("losses", {}).items():
            self.parts[name] = self.parts.get(name, 0.0) + value
        self.n += 1
        self.audio += stats["audio"]
        self.real += stats["real_samples"]
        self.padded += stats["padded_samples"]


def periodic(run: Run, stats: dict, window: _Window, start_time: float, progress: "_Progress") -> _Window:
    """After a step: log every ``log_every`` steps, validate every ``eval_every``, checkpoint every
    ``checkpoint_every`` (and all three at the last step). Returns the log window to continue with."""
    cfg, step, last = run.cfg, run.step, run.step == run.cfg.max_steps
    window.add(stats)
    progress.update(step, stats["loss"], stats["lr"], run.total_audio / max(time.perf_counter() - start_time, 1e-9))
    if step % cfg.log_every == 0 or last:
        now = time.perf_counter()
        run.logger.log({"step": step, "loss": window.loss / window.n,
                        **{name: total / window.n for name, total in window.parts.items()},
                        "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                        "audio_sec_per_sec": window.audio / max(now - window.start, 1e-9),
                        "padding_efficiency": window.real / window.padded if window.padded else None,
                        "elapsed": now - start_time, "skipped": run.issues.total})
        window = _Window()
    if run.val_cuts and cfg.eval_every and (step % cfg.eval_every == 0 or last):
        if run.is_main or run.sharded:
            with _root_unsharded(run.model, run.sharded):
                row = {"step": step, **validate(run.raw, run.val_set, run.val_cuts, run.options.val_limit)}
            run.logger.log(row)  # the main process's logger alone writes
            if run.is_main:
                progress.note(f"step {step}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                           if k != "step" and isinstance(v, float)))
        run.accelerator.wait_for_everyone()
    if step % cfg.checkpoint_every == 0 or last:
        save(run)
    return window


def train(card, options: RunOptions) -> dict:
    """Train ``card`` (a ResolvedCard) into ``options.out``; returns a summary of the run."""
    run = setup(card, options)
    progress = _Progress(run.cfg.max_steps, run.step, enabled=options.progress and run.is_main)
    params = [p for p in run.model.parameters() if p.requires_grad]
    start_time, window = time.perf_counter(), _Window()
    try:
        while run.step < run.cfg.max_steps:
            window = periodic(run, train_step(run, params), window, start_time, progress)
    finally:
        progress.close()
        run.logger.close()
    if run.issues.total:
        log.warning("skipped %d bad item(s): %s", run.issues.total, dict(run.issues.counts))
    return {"step": run.step, "checkpoint": str(ckpt.latest_checkpoint(run.out)), "issues": run.issues.summary(),
            "wall_seconds": time.perf_counter() - start_time, "audio_seconds": run.total_audio,
            "is_main": run.is_main}


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
