"""Step-wise decoding (``slmzoo.decoding``): rows that join a running batch and leave it decode exactly as alone."""

import numpy as np
import pytest
import torch

from slmzoo.cli.common import load_model
from slmzoo.decoding import DecodingBatch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("cards/salm.yaml", "tiny")


def clips(n):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(4000 + 3000 * i).astype(np.float32) * 0.1 for i in range(n)]


def decode_alone(model, wave, steps):
    batch, out = model.prefill([wave]), []
    for _ in range(steps):
        token = batch.logits.argmax(-1)
        out.append(int(token))
        batch.step(model.llm, token)
    return out


def test_rows_joining_and_leaving_decode_as_alone(model):
    waves, steps = clips(3), 10
    alone = [decode_alone(model, w, steps) for w in waves]
    # Row 0 starts alone; rows 1 and 2 join after 3 steps; row 0 leaves after its 10th token.
    batch, got = model.prefill([waves[0]]), [[], [], []]
    rows = [0]
    for t in range(steps + 3):
        if t == 3:
            batch = DecodingBatch.concat([batch, model.prefill([waves[1], waves[2]])])
            rows = [0, 1, 2]
        tokens = batch.logits.argmax(-1)
        for r, token in zip(rows, tokens.tolist()):
            got[r].append(token)
        keep = [i for i, r in enumerate(rows) if len(got[r]) < steps]
        if len(keep) < len(rows):
            batch.select(keep)
            rows, tokens = [rows[i] for i in keep], tokens[keep]
        if not rows:
            break
        batch.step(model.llm, tokens)
    assert got == alone
    assert batch.mask.shape[0] == 0 or batch.mask.any(0).all()  # columns nobody uses were cut


def test_greedy_steps_equal_generate(model):
    wave = clips(1)[0]
    text = model.generate(audio=[wave], max_new_tokens=8)[0]
    ids = decode_alone(model, wave, 8)
    stops = set(model.processor.stop_token_ids)
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    assert model.processor.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip() == text


def test_prefill_counts_audio_tokens(model):
    waves = clips(2)
    batch = model.prefill(waves)
    per_second = model.audio_tokens_per_second()
    assert batch.audio_tokens.tolist()[1] > batch.audio_tokens.tolist()[0] > 0
    assert abs(batch.audio_tokens[1] - len(waves[1]) / 16000 * per_second) <= 2
