"""`slmzoo units fit`: a codebook over the card's encoder features, usable by the discrete_units adapter."""

import json
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

import slmzoo
from tests.conftest import speechlike


def test_units_fit_writes_a_codebook_the_card_loads(tmp_path):
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"a{i}.wav", speechlike(0.5 + 0.2 * i, seed=i), 16000)
        rows.append({"audio_filepath": f"a{i}.wav", "duration": 0.5 + 0.2 * i, "text": "x"})
    rows.append({"audio_filepath": "missing.wav", "duration": 1.0, "text": "x"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "units.npy"
    result = subprocess.run([sys.executable, "-m", "slmzoo", "units", "fit", "speechgpt", "--preset", "tiny",
                             "--data", str(manifest), "--out", str(out), "--units", "8", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_units"] == 8 and summary["utterances"] == 4
    codebook = np.load(out)
    assert codebook.shape == (8, summary["dim"]) and np.isfinite(codebook).all()
    card = slmzoo.load_card("speechgpt", preset="tiny", overrides=[f"adapter.codebook={out}", "adapter.num_units=8"])
    model = slmzoo.build(card)
    assert torch.allclose(model.adapter.codebook.float(), torch.from_numpy(codebook))


def test_training_sees_the_units_inference_sees():
    """The codebook is fitted on the encoder in eval mode; in training mode HuBERT would mask frames (SpecAugment,
    ``mask_time_prob``) and drop activations, so the LLM would learn from other units than it gets at inference.
    The encoder under a discrete-units adapter stays in eval mode, whatever the model's mode."""
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("speechgpt", preset="tiny"))
    audio = torch.from_numpy(np.stack([speechlike(1.0, seed=1), speechlike(1.0, seed=2)]))
    lengths = torch.tensor([16000, 16000])

    def units():
        torch.manual_seed(1)  # the same masks and dropout draws, were any made
        encoded = model.encoder(audio, lengths)
        return model.adapter(encoded.hidden, encoded.lengths).units

    model.eval()
    at_inference = units()
    model.train()
    assert not model.encoder.training and model.llm.training
    assert torch.equal(units(), at_inference)
