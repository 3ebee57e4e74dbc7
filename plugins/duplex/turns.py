"""One channel of a duplex corpus cut into its turns: a Lhotse manifest of ordinary one-supervision cuts.

The agent's turns (``custom["target_audio"]``) are what an ASR model must read to score a duplex model's speech: an
ASR model trained on them too knows the agent's voice and its one-word answers (``slmzoo duplex turns``).
"""

from __future__ import annotations

from pathlib import Path

CHANNELS = ("agent", "user")


def channel_turns(cuts, channel: str, roles, margin: float = 0.05):
    """Yield one ``MonoCut`` per turn of ``roles`` on ``channel`` (``agent``: the cut's ``custom["target_audio"]``,
    ``user``: its recording), ``margin`` seconds either side, its supervision's text and speaker kept."""
    from lhotse import MonoCut, SupervisionSegment

    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: use {' or '.join(CHANNELS)}")
    for cut in cuts:
        recording = cut.recording if channel == "user" else (cut.custom or {}).get("target_audio")
        if recording is None:
            continue
        for turn in sorted(cut.supervisions, key=lambda s: s.start):
            if turn.speaker not in roles or not turn.text:
                continue
            start = max(turn.start - margin, 0.0)
            end = min(turn.end + margin, cut.duration)
            yield MonoCut(id=turn.id, start=cut.start + start, duration=end - start, channel=0, recording=recording,
                          supervisions=[SupervisionSegment(
                              id=turn.id, recording_id=recording.id, start=turn.start - start,
                              duration=turn.duration, channel=0, text=turn.text, speaker=turn.speaker,
                              language=turn.language)])


def write_turns(data: str | Path, out: str | Path, channel: str = "agent", roles=None, margin: float = 0.05) -> dict:
    """``data``'s duplex cuts -> ``out`` (Lhotse JSONL, absolute audio paths); returns a summary."""
    from lhotse import CutSet

    from slmzoo.data.manifests import open_manifest
    from slmzoo_plugins.duplex.specs import DuplexSettings

    settings = DuplexSettings()
    roles = roles or (settings.output_roles if channel == "agent" else settings.input_roles)
    turns = CutSet.from_cuts(channel_turns(open_manifest(data), channel, roles, margin))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    turns.to_jsonl(out)
    return {"turns": len(turns), "seconds": round(sum(c.duration for c in turns), 1), "manifest": str(out)}


def write_word_tokenizer(data: str | Path, out: str | Path) -> dict:
    """A word-level tokenizer of every turn's words in ``data`` (duplex cuts or any manifest), saved to ``out``."""
    from slmzoo.data.manifests import open_manifest
    from slmzoo.tokenizer import word_level_tokenizer

    words = {word for cut in open_manifest(data) for s in cut.supervisions if s.text for word in s.text.split()}
    tokenizer = word_level_tokenizer(words)
    tokenizer.save_pretrained(str(out))
    return {"words": len(words), "vocab_size": len(tokenizer), "tokenizer": str(out)}
