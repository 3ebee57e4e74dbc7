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
