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
