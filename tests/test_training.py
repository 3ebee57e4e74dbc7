"""Training loop: schedules and groups, metrics, atomic checkpoints, exact resume, bad data, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slmzoo.training import checkpoints as ckpt
from slmzoo.training.loop import ResumeError, RunOptions, train
from slmzoo.training.metrics import read_metrics
from slmzoo.training.optim import lr_factor, param_groups
from tests.fakes import tiny_model_card, write_corpus

FAST = ["train.max_duration=3", "train.log_every=1", "train.warmup_steps=2", "train.lr=3e-3",
        "train.augment={speed_perturb: [0.9, 1.1], spec_augment: true, noise_snr: [10, 30]}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=24)


def _train(corpus, out, *sets, resume=False, **kw):
    card = tiny_model_card(*FAST, *sets)
    return train(card, RunOptions(train=[str(corpus)], out=out, resume=resume, progress=False, **kw))


def test_lr_schedule_warmup_then_decay():
    assert [lr_factor(s, 2, 10, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 2, 10, "cosine") == 1.0 and lr_factor(10, 2, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 2, 10, "constant") == 1.0


def test_learning_rates_per_group_and_lora():
    from slmzoo.builder import build

    card = tiny_model_card("llm.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}",
                           "train.freeze=[llm]", "train.lr_groups={lora: 0.01, encoder: 0.001}")
    groups = param_groups(build(card), card.train)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"adapter": card.train.lr, "encoder": 0.001, "lora": 0.01}  # the frozen LLM base is absent
    lora = sum(p.numel() for g in groups if g["name"] == "lora" for p in g["params"])
    assert lora == 2 * ((4 * 128 + 128 * 4) + (4 * 128 + 64 * 4))  # 2 layers x (q: 128 -> 128, v: 128 -> 64)


def test_metrics_checkpoints_and_loadable(corpus, tmp_path):
    import slmzoo

    summary = _train(corpus, tmp_path / "run", "train.max_steps=4", "train.checkpoint_every=1", "train.keep_last=2")
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"step", "loss", "lr"} <= set(r) for r in rows)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path / "run")] == ["step-000003", "step-000004"]
    assert summary["checkpoint"].endswith("step-000004")
    model = slmzoo.from_pretrained(summary["checkpoint"])  # random-init tiny model: every tensor is saved
    assert json.loads((ckpt.latest_checkpoint(tmp_path / "run") / "slmzoo.json").read_text())["trainable_only"] is False
    assert model.generate([torch.zeros(4000)], max_new_tokens=3) is not None


def test_frozen_random_component_is_saved_pretrained_one_is_not():
    from slmzoo.builder import build

    model = build(tiny_model_card("train.freeze=[encoder]"))
    assert ckpt.weight_keys(model) is None  # the frozen encoder has no pretrained source: saved too
    model.card.data["encoder"]["pretrained"] = "somewhere/on-the-hub"
    keys = ckpt.weight_keys(model)
    assert keys is not None and not any(k.startswith("encoder.") for k in keys)
    assert any(k.startswith("adapter.") for k in keys) and any(k.startswith("llm.") for k in keys)


def test_resume_is_exact(corpus, tmp_path, monkeypatch):
    """6 steps straight vs 3, a kill, and --resume for 3 more: identical losses, bit for bit."""
    _train(corpus, tmp_path / "straight", "train.max_steps=6", "train.checkpoint_every=3")
    save = ckpt.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        save(run_dir, step, *args, **kwargs)
        raise KeyboardInterrupt  # killed right after step 3's checkpoint

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(corpus, tmp_path / "split", "train.max_steps=6", "train.checkpoint_every=3")
    monkeypatch.undo()
    # A kill after step 3's checkpoint left more log lines behind; resume must drop them.
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 123.0, "lr": 0.0}) + "\n")
    _train(corpus, tmp_path / "split", "train.max_steps=6", "train.checkpoint_every=3", resume=True)
    straight = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "straight")]
    split = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "split")]
    assert len(straight) == 6 and split == straight
    a = ckpt.latest_checkpoint(tmp_path / "straight") / "model.safetensors"
    b = ckpt.latest_checkpoint(tmp_path / "split") / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_optimizer_state_is_keyed_by_name_and_positional_files_still_load():
    def trained():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
        return model, optimizer

    model, optimizer = trained()
    state = ckpt.optimizer_state(model, optimizer)
    assert sorted(state["state"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    for saved in (state, optimizer.state_dict()):  # by name (now) and by position (first checkpoints)
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        restored = torch.optim.AdamW(fresh.parameters())
        ckpt.restore_optimizer(fresh, restored, saved)
        for a, b in zip(restored.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
            assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and a["step"] == b["step"]


def test_a_parameter_that_never_had_a_gradient_resumes_fresh():
    """A trainable parameter no loss reached (a head whose loss weight is 0) has no optimizer state to save; resume
    starts it fresh instead of refusing the checkpoint (speech-llama's CTC head stopped a --resume)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    unused = torch.nn.Linear(2, 2)
    whole = torch.nn.ModuleDict({"used": model, "unused": unused})
    optimizer = torch.optim.AdamW(whole.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state = ckpt.optimizer_state(whole, optimizer)
    assert not any(name.startswith("unused.") for name in state["state"])
    whole.zero_grad(set_to_none=True)  # as a resumed run's fresh model
    restored = torch.optim.AdamW(whole.parameters())
    ckpt.restore_optimizer(whole, restored, state)
    assert torch.equal(restored.state[model[0].weight]["exp_avg"], optimizer.state[model[0].weight]["exp_avg"])
    assert not restored.state[unused.weight] or not restored.state[unused.weight]["exp_avg"].any()


def test_bf16_accumulation_checkpointing_then_refuses_to_overwrite(corpus, tmp_path):
    summary = _train(corpus, tmp_path / "run", "train.max_steps=1", "train.precision=bf16", "train.grad_accum=2",
                     "train.gradient_checkpointing=true")
    assert summary["step"] == 1 and read_metrics(tmp_path / "run")[0]["loss"] > 0
    with pytest.raises(ResumeError, match="--resume"):
        _train(corpus, tmp_path / "run", "train.max_steps=2")


def test_interrupted_save_leaves_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    _train(corpus, tmp_path / "run", "train.max_steps=2", "train.checkpoint_every=1", "train.keep_last=1")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of writing the optimizer state

    monkeypatch.setattr(ckpt.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(corpus, tmp_path / "run", "train.max_steps=3", "train.checkpoint_every=1", "train.keep_last=1",
               resume=True)
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoints" / ".tmp-step-000003").is_dir()  # the partial save
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000002"
    import slmzoo

    slmzoo.from_pretrained(ckpt.latest_checkpoint(tmp_path / "run"))
    _train(corpus, tmp_path / "run", "train.max_steps=3", "train.checkpoint_every=1", "train.keep_last=1",
           resume=True)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000003"]


def test_bad_data_is_skipped_not_fatal_and_strict_stops(tmp_path):
    from slmzoo.data import DataError

    corpus = write_corpus(tmp_path / "c", n=8, extra=[
        {"id": "missing", "audio_filepath": "nope.flac", "duration": 0.5, "text": "one"},
        {"id": "long", "audio_filepath": "audio/u000.flac", "duration": 0.3, "text": "nine " * 100}])
    summary = _train(corpus, tmp_path / "run", "train.max_steps=3", "train.max_text_tokens=64")
    assert summary["issues"]["by_reason"] == {"missing": 1, "too_long": 1}
    with pytest.raises(DataError):
        _train(corpus, tmp_path / "strict", "train.max_steps=3", strict=True)


def test_cli_train_then_plot(corpus, tmp_path):
    import typer

    from slmzoo.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    tiny_model_card()  # registers the fake components in this process
    sets = [a for s in ("encoder.type=fake_frames", "adapter.type=fake_linear", *FAST, "train.max_steps=2",
                        "train.eval_every=2") for a in ("--set", s)]
    result = CliRunner().invoke(app, ["train", "salm", "--preset", "tiny", *sets, "--train", f"{corpus}:1.0",
                                      "--val", str(corpus), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["step"] == 2 and "val_wer" in rows[-1] and "val_loss" in rows[-1]
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0 and (tmp_path / "run" / "curves.png").stat().st_size > 1000
    # generate takes the run folder too (its newest checkpoint), like eval
    from slmzoo.cli.main import app as main_app

    audio = next((corpus.parent / "audio").glob("*.flac"))
    result = CliRunner().invoke(main_app, ["generate", str(tmp_path / "run"), "--audio", str(audio),
                                           "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["audio"] == str(audio)


@pytest.mark.slow
def test_accelerate_launch_runs_ddp_on_two_cpu_processes(tmp_path):
    """`accelerate launch -m slmzoo train` with two processes (gloo on CPU): no distribution code of ours."""
    import shutil
    import subprocess

    from tests.conftest import DIGITS

    if not (DIGITS / "train.jsonl").is_file() or shutil.which("accelerate") is None:
        pytest.skip("needs the digits corpus and the accelerate launcher")
    run = tmp_path / "ddp"
    result = subprocess.run(
        ["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "slmzoo", "train", "salm", "--preset", "tiny",
         "--train", str(DIGITS / "train.jsonl"), "--out", str(run), "--no-progress",
         "--set", "train.max_steps=4", "--set", "train.log_every=2", "--set", "train.checkpoint_every=4",
         "--set", "train.max_duration=8"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # the main process alone logs
    import slmzoo

    model = slmzoo.from_pretrained(run / "checkpoints" / "step-000004")
    assert model.generate([np.zeros(8000, np.float32)], max_new_tokens=2)[0] is not None


def _torchrun(tmp_path, out, *args, fsdp: bool, max_steps: int = 4, resume: bool = False):
    """``torchrun`` two CPU processes of ``slmzoo train`` on the digits corpus: DDP, or FSDP2 through the
    tests/fsdp_on_cpu.py harness. Returns the run's metrics."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import DIGITS, REPO

    if not (DIGITS / "train.jsonl").is_file() or shutil.which("torchrun") is None:
        pytest.skip("needs the digits corpus and torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    target = [str(REPO / "tests" / "fsdp_on_cpu.py")] if fsdp else ["-m", "slmzoo"]
    if fsdp:  # as `accelerate config` writes it: FSDP2, each LLM layer sharded on its own, the rest with the root
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                   FSDP_TRANSFORMER_CLS_TO_WRAP="Qwen3DecoderLayer")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000 + (7 if fsdp else 0)), *target, "train", "salm", "--preset", "tiny",
               "--train", str(DIGITS / "train.jsonl"), "--val", str(DIGITS / "dev.jsonl"), "--out", str(out),
               "--no-progress", *(["--resume"] if resume else []), *args,
               *[a for s in (f"train.max_steps={max_steps}", "train.log_every=1", "train.checkpoint_every=2",
                             "train.eval_every=4", "train.max_duration=8", "train.keep_last=2")
                 for a in ("--set", s)]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("trained to step") == 1  # the main process alone reports
    return read_metrics(out)


@pytest.mark.slow
def test_fsdp_trains_like_ddp_saves_whole_weights_and_resumes_exactly(tmp_path):
    """FSDP2 (two CPU processes): the same losses as DDP on the same batches, validation with both ranks taking
    part, checkpoints gathered into whole weights that ``from_pretrained`` loads, and an exact ``--resume``."""
    import slmzoo

    ddp = _torchrun(tmp_path, tmp_path / "ddp", fsdp=False)
    fsdp = _torchrun(tmp_path, tmp_path / "fsdp", fsdp=True)
    losses = {name: [r["loss"] for r in rows if "loss" in r] for name, rows in (("ddp", ddp), ("fsdp", fsdp))}
    assert len(losses["fsdp"]) == 4
    assert losses["fsdp"][0] == pytest.approx(losses["ddp"][0], rel=1e-6)  # same weights, same first batches
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-3)  # reductions in another order after that
    assert [r["step"] for r in fsdp if "val_wer" in r] == [4]
    assert "accelerate: FSDP, 2 process(es)" in (tmp_path / "fsdp" / "train.log").read_text()
    assert "accelerate: MULTI_CPU, 2 process(es)" in (tmp_path / "ddp" / "train.log").read_text()

    model = slmzoo.from_pretrained(tmp_path / "fsdp" / "checkpoints" / "step-000004")  # strict: every tensor
    reference = slmzoo.from_pretrained(tmp_path / "ddp" / "checkpoints" / "step-000004")
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=name)
    optimizer = torch.load(tmp_path / "fsdp" / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=False)
    assert "llm.model.model.embed_tokens.weight" in optimizer["state"]  # whole, keyed by parameter name

    # Resume: a copy of the run cut back to its step-2 checkpoint continues to the same losses, bit for bit.
    import shutil

    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000004")
    resumed = _torchrun(tmp_path, tmp_path / "resumed", fsdp=True, resume=True)
    assert [(r["step"], r.get("loss")) for r in resumed] == [(r["step"], r.get("loss")) for r in fsdp]
    from safetensors.torch import load_file

    straight = load_file(tmp_path / "fsdp" / "checkpoints" / "step-000004" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "checkpoints" / "step-000004" / "model.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own: killpg misses them)."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_a_ddp_run_killed_with_sigkill_resumes(tmp_path):
    """Two DDP processes (torchrun, CPU) killed with SIGKILL mid-run, right after a checkpoint appeared: ``--resume``
    continues from the newest intact checkpoint to the end, logging each step once."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import DIGITS, REPO

    if not (DIGITS / "train.jsonl").is_file() or shutil.which("torchrun") is None:
        pytest.skip("needs the digits corpus and torchrun")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}

    def launch(*extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000 + 13), "-m", "slmzoo", "train", "salm", "--preset", "tiny",
                "--train", str(DIGITS / "train.jsonl"), "--out", str(out), "--no-progress", *extra,
                *[a for s in ("train.max_steps=10", "train.log_every=1", "train.checkpoint_every=2",
                              "train.max_duration=8", "train.keep_last=3") for a in ("--set", s)]]

    proc = subprocess.Popen(launch(), env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.complete_checkpoints(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    for pid in [*_descendants(proc.pid), proc.pid]:  # both ranks and the launcher, mid-step after a checkpoint
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    killed_at = [p.name for p in ckpt.complete_checkpoints(out)]
    assert killed_at and killed_at[-1] != "step-000010", "the run finished before it could be killed"

    result = subprocess.run(launch("--resume"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {ckpt.checkpoint_dir(out) / killed_at[-1]}" in (out / "train.log").read_text()
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 11))
    assert ckpt.latest_checkpoint(out).name == "step-000010"


def test_ddp_looks_for_unused_parameters_only_when_layers_are_dropped():
    """Parakeet's FastConformer drops layers at random in training (layerdrop 0.1 by default): under DDP each rank
    then leaves other parameters without a gradient. Found when a two-process run of the salm tiny preset died
    at step 7 with a gloo size mismatch."""
    import slmzoo
    from slmzoo.training.loop import skips_layers

    assert skips_layers(slmzoo.build(slmzoo.load_card("salm", preset="tiny")))
    no_drop = slmzoo.load_card("salm", preset="tiny", overrides=["encoder.config.layerdrop=0.0"])
    assert not skips_layers(slmzoo.build(no_drop))
    assert not skips_layers(slmzoo.build(slmzoo.load_card("ultravox", preset="tiny")))
    whisper = slmzoo.load_card("ultravox", preset="tiny", overrides=["encoder.config.encoder_layerdrop=0.2"])
    assert skips_layers(slmzoo.build(whisper))
    # BEATs keeps its config as a plain dict (SALMONN's second encoder): read, not a TypeError from vars()
    assert not skips_layers(slmzoo.build(slmzoo.load_card("salmonn", preset="tiny")))
    beats_config = torch.nn.Module()
    beats_config.config = {"layerdrop": 0.05}
    assert skips_layers(beats_config)


def test_train_init_starts_from_a_trained_model(corpus, tmp_path):
    """--init: a run's first weights are those of a saved model (any source generate takes); a tensor that does
    not fit the card's model is named."""
    import typer

    import slmzoo
    from slmzoo.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    card = tiny_model_card()
    torch.manual_seed(1)
    start = slmzoo.build(card)
    with torch.no_grad():
        for p in start.parameters():
            p.fill_(0.0125)
    start.save_pretrained(tmp_path / "start")
    sets = [a for s in ("encoder.type=fake_frames", "adapter.type=fake_linear", *FAST, "train.max_steps=1",
                        "train.lr=1e-9", "train.warmup_steps=0") for a in ("--set", s)]

    def run(out, *extra):
        return CliRunner().invoke(app, ["train", "salm", "--preset", "tiny", *sets, "--train", str(corpus),
                                        "--out", str(tmp_path / out), "--no-progress", *extra])

    assert run("init", "--init", f"local-dir:{tmp_path / 'start'}").exit_code == 0
    assert run("fresh").exit_code == 0
    after = slmzoo.from_pretrained(ckpt.latest_checkpoint(tmp_path / "init"))
    fresh = slmzoo.from_pretrained(ckpt.latest_checkpoint(tmp_path / "fresh"))
    weights = dict(after.named_parameters())
    assert all(torch.allclose(p, torch.full_like(p, 0.0125), atol=1e-6) for p in weights.values())
    assert not all(torch.allclose(p, torch.full_like(p, 0.0125), atol=1e-6) for p in fresh.parameters())
    bad = run("bad", "--init", str(tmp_path / "start"), "--set", "llm.config.hidden_size=32")
    assert bad.exit_code == 2 and "has shape" in bad.output
    assert run("none", "--init", str(tmp_path)).exit_code == 2
