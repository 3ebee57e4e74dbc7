"""Scoring a duplex model as NeMo validates it: the agent text's BLEU (and, with an ASR model, ASR-BLEU of its
speech), Whisper-normalised, sacrebleu corpus BLEU; plus the share of agent answers exactly right."""

from __future__ import annotations

import torch

from slmzoo.evaluation import normalizer


def agent_turns(cut, roles) -> list[str]:
    return [s.text for s in sorted(cut.supervisions, key=lambda s: s.start) if s.speaker in roles and s.text]


@torch.no_grad()
def transcribe_duplex(model, cuts: list, batch_size: int = 8, decode_audio: bool = True) -> list[dict]:
    """Generate the agent for each cut's user channel: one record per cut with ``id``, ``reference`` (the agent
    turns joined), ``text``, ``turns`` and ``reference_turns`` (and ``audio`` ``[S]`` when ``decode_audio``)."""
    from slmzoo.data.dataset import load_waveform

    records = []
    for start in range(0, len(cuts), batch_size):
        chunk = cuts[start : start + batch_size]
        waves = [load_waveform(cut, model.sampling_rate) for cut in chunk]
        out = model.generate_duplex(waves, model.sampling_rate, decode_audio=decode_audio)
        turns = model.decode_turns(out.text_tokens, out.lengths)
        for i, cut in enumerate(chunk):
            reference_turns = agent_turns(cut, model.settings.output_roles)
            record = {"id": cut.id, "reference": " ".join(reference_turns), "text": out.texts[i],
                      "turns": turns[i], "reference_turns": reference_turns}
            if decode_audio:
                record["audio"] = out.audio[i]
            records.append(record)
    return records


def score_texts(references: list[str], hypotheses: list[str], normalize: str = "english") -> dict:
    """Corpus BLEU and the exact-match rate of normalised hypotheses."""
    import sacrebleu

    norm = normalizer(normalize)
    refs, hyps = [norm(r) for r in references], [norm(h) for h in hypotheses]
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score if refs else 0.0
    exact = sum(r == h for r, h in zip(refs, hyps)) / max(len(refs), 1)
    return {"bleu": bleu, "exact": exact, "num": len(refs)}


def answer_accuracy(records: list[dict], normalize: str = "basic") -> float:
    """Share of the reference agent answers whose turn (in order) the model got exactly right."""
    norm = normalizer(normalize)
    right = total = 0
    for record in records:
        for i, reference in enumerate(record["reference_turns"]):
            total += 1
            right += i < len(record["turns"]) and norm(record["turns"][i]) == norm(reference)
    return right / max(total, 1)
