"""The processor (slmzoo.processing): tokenizer, chat template, audio tag, prompt formatting and audio settings,
loaded from a card or a saved model without building (or importing) the model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import slmzoo
from slmzoo.processing import AudioSettings, load_processor
from tests.conftest import REPO, speechlike


def test_loads_from_a_card_without_importing_model_code():
    probe = (
        "import sys, slmzoo; p = slmzoo.load_processor('salm', preset='tiny'); "
        "import numpy; b = p([numpy.zeros(8000, 'float32')], ['Transcribe.']); print(p.sampling_rate, list(b['input_ids'].shape)); "
        "print(sorted(m for m in sys.modules if m.startswith(('slmzoo.model', 'slmzoo.builder', 'slmzoo_plugins.llms.hf', "
        "'slmzoo_plugins.encoders.whisper', 'slmzoo_plugins.fusion.concat'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    rate, modules = result.stdout.strip().splitlines()
    assert rate.startswith("16000") and modules == "[]"


def test_batches_equal_the_models_own_and_survive_a_save(tmp_path):
    card = slmzoo.load_card("qwen2-audio", preset="tiny")
    processor = load_processor(card)
    model = slmzoo.build(card)
    audio, prompts = [speechlike(0.6), [speechlike(0.3, 1), speechlike(0.4, 2)]], [
        "What is said?", [{"role": "user", "content": "Compare <|AUDIO|> and <|AUDIO|>".replace(
            "<|AUDIO|>", card.prompt.audio_tag)}]]
    mine, theirs = processor(audio, prompts, ["one", "two"]), model.prepare_batch(audio, prompts, ["one", "two"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert processor.audio_token_id == model.llm.audio_token_id
    model.save_pretrained(tmp_path / "saved")
    saved = load_processor(tmp_path / "saved")
    again = saved(audio, prompts, ["one", "two"])
    assert all(torch.equal(mine[k], again[k]) for k in mine)
    ids = model.generate(audio[:1], prompts=prompts[:1], max_new_tokens=3)
    assert isinstance(ids[0], str)


def test_audio_settings_come_from_the_encoder_options():
    from slmzoo.processing import Processor

    full = Processor.from_card(slmzoo.load_card("pengi"), meta=True)  # meta: no hub tokenizer offline
    assert full.audio == AudioSettings(sampling_rate=48000)  # CLAP's feature extractor
    assert load_processor("pengi", preset="tiny").sampling_rate == 16000  # the tiny preset's feature_extractor
    assert load_processor("salmonn", preset="tiny").sampling_rate == 16000  # multi: its first encoder
    batch = full([np.zeros(16000, np.float32)], sampling_rate=16000)
    assert batch["audio"].shape == (1, 48000)  # resampled to the encoder's rate


def test_decode_cuts_at_the_first_stop_token():
    processor = load_processor("salm", preset="tiny")
    ids = processor.tokenizer(["seven", "four"], add_special_tokens=False).input_ids
    stop = processor.stop_token_ids[0]
    rows = torch.tensor([ids[0] + [stop] + ids[1], ids[1] + [stop] * (len(ids[0]) + 1)])
    assert processor.decode(rows) == ["seven", "four"]


def test_an_unreadable_tokenizer_names_the_card_key():
    with pytest.raises(slmzoo.errors.PretrainedLoadError, match="llm.tokenizer: cannot load '/no/such/tokenizer'"):
        load_processor("salm", preset="tiny", overrides=["llm.tokenizer=/no/such/tokenizer"])
