"""Step-wise decoding (``slmzoo.decoding``): rows that join a running batch and leave it decode exactly as alone,
for every kind of fusion: concatenation (salm) and the memory fusions, whose per-row audio memory (and BESTOW's text
self-attention inputs) joins and leaves with the rows."""

import numpy as np
import pytest
import torch

from slmzoo.decoding import DecodingBatch
from tests.serve_utils import varied_model

#: card -> its fusion; the memory fusions' tiny presets are opened (tests/serve_utils.varied_model)
CARDS = {"salm": "concat", "bestow": "cross_attention", "audio-flamingo": "gated_xattn", "mu-llama": "adapter_prompt"}


@pytest.fixture(scope="module", params=list(CARDS))
def model(request, one_thread):
    model = varied_model(request.param, fusion_scale=1.0)
    assert type(model.fusion).__module__.endswith(CARDS[request.param]) and model.supports_stepwise_decoding()
    return model


def clips(n):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(4000 + 3000 * i).astype(np.float32) * 0.1 for i in range(n)]


def decode_alone(model, wave, steps) -> tuple[list[int], list[torch.Tensor]]:
    batch, tokens, logits = model.prefill([wave]), [], []
    for _ in range(steps):
        logits.append(batch.logits[0])
        token = batch.logits.argmax(-1)
        tokens.append(int(token))
        batch.step(model.llm, token)
    model.fusion.release()
    return tokens, logits


def test_rows_joining_and_leaving_decode_as_alone(model):
    waves, steps = clips(4), 10
    alone = [decode_alone(model, w, steps) for w in waves]
    # the audio matters: what a row attends to shows in its logits (a row with another's memory would not pass)
    assert not torch.allclose(alone[0][1][0], alone[1][1][0], atol=1e-3)
    # Row 0 starts alone; rows 1 and 2 join after 3 steps, row 3 after 5; rows leave after their 10th token.
    batch, tokens, logits = model.prefill([waves[0]]), [[] for _ in waves], [[] for _ in waves]
    rows = [0]
    for t in range(steps + 5):
        if t in (3, 5):
            joining = [1, 2] if t == 3 else [3]
            batch = DecodingBatch.concat([batch, model.prefill([waves[i] for i in joining])])
            rows += joining
        picked = batch.logits.argmax(-1)
        for i, (r, token) in enumerate(zip(rows, picked.tolist())):
            tokens[r].append(token)
            logits[r].append(batch.logits[i])
        keep = [i for i, r in enumerate(rows) if len(tokens[r]) < steps]
        if len(keep) < len(rows):
            batch.select(keep)
            rows, picked = [rows[i] for i in keep], picked[keep]
        if not rows:
            break
        batch.step(model.llm, picked)
    model.fusion.release()
    assert tokens == [a[0] for a in alone]
    for got, (_, expected) in zip(logits, alone):
        torch.testing.assert_close(torch.stack(got), torch.stack(expected), atol=1e-4, rtol=0)
    assert batch.mask.shape[0] == 0 or batch.mask.any(0).all()  # columns nobody uses were cut


def test_greedy_steps_equal_generate(model):
    wave = clips(1)[0]
    text = model.generate(audio=[wave], max_new_tokens=8)[0]
    ids, _ = decode_alone(model, wave, 8)
    stops = set(model.processor.stop_token_ids)
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    assert model.processor.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip() == text


def test_prefill_counts_prompt_and_audio_tokens(model):
    waves = clips(2)
    batch = model.prefill(waves, ["Say it.", "Say it again please."])
    model.fusion.release()
    per_second = model.audio_tokens_per_second()
    audio = batch.audio_tokens.tolist()
    assert audio[1] != audio[0] and min(audio) > 0
    if per_second:
        assert abs(audio[1] - len(waves[1]) / 16000 * per_second) <= 2
    # the prompt: its text tokens (the audio tag replaced) plus its audio, wherever the fusion puts the audio
    processor = model.processor
    text = [len(processor.encode(p, num_audio=1).input_ids) - 1 for p in ["Say it.", "Say it again please."]]
    assert batch.prompt_tokens.tolist() == [t + a for t, a in zip(text, audio)]
