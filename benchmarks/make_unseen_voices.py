"""An evaluation split of the spoken-digits corpus with voices training never heard.

The corpus's own recipe (../shared/data/digits/README.md): espeak-ng, 2 to 6 English digit words per utterance,
random speed 130-190 words per minute and pitch 30-70, 16 kHz mono 16-bit FLAC, NeMo-style JSONL. Its train, dev
and test splits share eight voices; this split uses eight others (other accents and voice variants), so a WER on
it measures how far a model generalises beyond the speakers it was trained on.

    python benchmarks/make_unseen_voices.py --out runs/digits-unseen   # writes unseen.jsonl + audio/
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAINED_VOICES = ("en-029+m5", "en-gb", "en-gb+f4", "en-gb-scotland", "en-gb-x-rp+f1", "en-us", "en-us+f2",
                  "en-us+m3")
UNSEEN_VOICES = ("en-gb-x-gbclan", "en-gb-x-gbcwmd+f3", "en-us-nyc", "en-029+f1", "en-gb-x-rp+m7", "en-us+f4",
                 "en-gb-scotland+m2", "en-us+m6")


def synthesize(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    """One utterance as 16 kHz mono 16-bit FLAC."""
    from slmzoo.audio import resample

    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav.name, text],
                       check=True, capture_output=True)
        audio, rate = sf.read(wav.name, dtype="float32", always_2d=True)
    sf.write(path, resample(audio.mean(axis=1), rate, 16000), 16000, subtype="PCM_16")


def make_split(out: Path, count: int = 200, seed: int = 0) -> Path:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    assert not set(UNSEEN_VOICES) & set(TRAINED_VOICES)
    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        text = " ".join(WORDS[d] for d in rng.integers(0, 10, size=int(rng.integers(2, 7))))
        voice = UNSEEN_VOICES[i % len(UNSEEN_VOICES)]
        name = f"audio/unseen-{i:05d}.flac"
        synthesize(text, voice, int(rng.integers(130, 191)), int(rng.integers(30, 71)), out / name)
        lines.append({"id": f"unseen-{i:05d}", "audio_filepath": name, "duration": sf.info(out / name).duration,
                      "text": text, "voice": voice})
    manifest = out / "unseen.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_split(args.out, args.count, args.seed))


if __name__ == "__main__":
    main()
