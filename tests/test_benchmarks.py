"""The benchmarks' measuring code, run small on the CPU (the GPU numbers come from the same functions)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DIGITS


def test_the_gpu_card_of_the_mfu_benchmark_is_about_one_billion_parameters():
    import slmzoo
    from benchmarks.bench_bucketing import GPU_CARD_SETS

    model = slmzoo.build(slmzoo.load_card("salm", overrides=GPU_CARD_SETS), meta=True)
    assert 0.9e9 < sum(p.numel() for p in model.parameters()) < 1.2e9


def test_bf16_mfu_counts_model_flops_and_times_the_same_steps(one_thread):
    """FlopCounterMode's count covers at least the LLM's 6 x weights x positions (every weight trains in the tiny
    preset), and MFU is the achieved FLOP rate over the peak given."""
    import slmzoo
    from benchmarks.bench_bucketing import bf16_mfu
    from slmzoo.data import SpeechDataset, make_loader, make_sampler, training_cuts

    if not (DIGITS / "train.jsonl").is_file():
        pytest.skip("needs the digits corpus")
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny"))
    dataset = SpeechDataset(model.processor)
    loader = make_loader(dataset, make_sampler(training_cuts([str(DIGITS / "train.jsonl")]), 8.0, seed=0))
    batches = [batch for _, batch in zip(range(2), loader)]
    result = bf16_mfu(model, batches, torch.device("cpu"), peak=1e12)

    linear = sum(m.weight.numel() for m in model.llm.modules() if isinstance(m, torch.nn.Linear))
    positions = sum(b["input_ids"].numel() for b in batches)  # the LLM sees at least the text positions
    assert result["model_flops"] >= 6 * linear * positions
    assert result["steps"] == 2 and result["llm_tokens_per_second"] > 0
    assert result["mfu"] == pytest.approx(result["model_tflops_per_second"])  # a peak of 1 TFLOP/s


def test_the_architecture_benchmark_trains_every_family_in_full_with_one_recipe():
    """The recipe is the salm tiny preset's `train` section with nothing frozen; LoRA on a random tiny backbone
    is replaced by full training; every family the benchmark names has a card."""
    import json

    import slmzoo
    from benchmarks.bench_architectures import FAMILIES, family_overrides, recipe, without_lora

    train = json.loads(recipe(None, 3e-4)[1].removeprefix("train="))
    assert train["freeze"] == [] and train["lr"] == 3e-4
    assert train["max_steps"] == slmzoo.load_card("salm", preset="tiny").train.max_steps
    short = json.loads(recipe(300, 1e-3)[1].removeprefix("train="))
    assert short["max_steps"] == 300 and short["augment"]["start_batch"] <= 100
    assert family_overrides("bestow", DIGITS) == ["--set", "llm.lora=null"]
    assert family_overrides("salm", DIGITS) == []
    for family in FAMILIES:
        card = slmzoo.load_card(family, preset="tiny", overrides=without_lora(family)[1::2])
        assert all(card.data[s].get("lora") is None for s in card.sections if isinstance(card.data.get(s), dict))


def test_the_architecture_table_merges_runs_benchmarked_one_at_a_time_and_notes_each_family():
    from benchmarks.bench_architectures import merge_tables, with_notes

    head = "| Run | Steps |\n|---|---|\n"
    old = "| Run | Steps |\n|---|---|\n| salm-lr0.001 | 1600 |\n| bestow-lr0.001 | 1600 |\n"
    new = with_notes(head + "| bestow-lr0.001 | 1400 |\n| bestow-outputs-lr0.002 | 1400 |\n",
                     {"bestow": "short of 15%", "bestow-outputs": "a variant"})
    assert new.splitlines()[0] == "| Run | Steps | Notes |"
    assert merge_tables(old, new, {"salm": "older recipe"}).splitlines()[2:] == [
        "| bestow-lr0.001 | 1400 | short of 15% |", "| bestow-outputs-lr0.002 | 1400 | a variant |",
        "| salm-lr0.001 | 1600 | older recipe |"]
