"""Scoring a duplex model as NeMo validates it: the agent text's BLEU (and, with an ASR model, ASR-BLEU of its
speech), Whisper-normalised, sacrebleu corpus BLEU; plus the share of agent answers exactly right."""

from __future__ import annotations

import torch

from slmzoo.evaluation import normalizer


def agent_turns(cut, roles) -> list[str]:
    return [s.text for s in sorted(cut.supervisions, key=lambda s: s.start) if s.speaker in roles and s.text]


@torch.no_grad()
def transcribe_duplex(model, cuts: list, batch_size: int = 8, decode_audio: bool = True,
                      issues=None) -> list[dict]:
    """Generate the agent for each cut's user channel: one record per cut with ``id``, ``duration``, ``reference``
    (the agent turns joined), ``text``, ``turns`` and ``reference_turns``; with ``decode_audio`` also ``audio``
    ``[S]`` (the agent's speech) and ``speech_turns`` (its ``(start, end)`` samples, one span per spoken turn)."""
    from slmzoo.data.dataset import BadItem, load_waveform

    records = []
    for start in range(0, len(cuts), batch_size):
        chunk, waves = [], []
        for cut in cuts[start : start + batch_size]:
            try:
                waves.append(load_waveform(cut, model.sampling_rate))
                chunk.append(cut)
            except BadItem as bad:
                if issues is None:
                    raise
                issues.report(cut.id, bad.reason, bad.kind)
        if not chunk:
            continue
        out = model.generate_duplex(waves, model.sampling_rate, decode_audio=decode_audio)
        turns = model.decode_turns(out.text_tokens, out.lengths)
        for i, cut in enumerate(chunk):
            reference_turns = agent_turns(cut, model.settings.output_roles)
            record = {"id": cut.id, "duration": len(waves[i]) / model.sampling_rate,
                      "reference": " ".join(reference_turns), "text": out.texts[i], "turns": turns[i],
                      "reference_turns": reference_turns}
            if decode_audio:
                record["audio"] = out.audio[i]
                record["speech_turns"] = speech_turns(model, out.audio_codes[i], int(out.lengths[i]))
            records.append(record)
    return records


def speech_turns(model, codes: torch.Tensor, frames: int) -> list[tuple[int, int]]:
    """``(start, end)`` samples of each turn the agent spoke: from the frame after a speech BOS to its speech EOS
    (or the end), read off the first codebook of ``codes [T, K]``."""
    vocabulary, size = model.vocabulary, model.codec.samples_per_frame
    spans, opened = [], None
    for t, code in enumerate(codes[:frames, 0].tolist()):
        if code == vocabulary.bos:
            opened = t + 1
        elif code == vocabulary.eos and opened is not None:
            spans.append((opened * size, t * size))
            opened = None
    if opened is not None:
        spans.append((opened * size, frames * size))
    return spans


def transcribe_spans(asr, audio: list[torch.Tensor], spans: list[list[tuple[int, int]]], sampling_rate: int,
                     batch_size: int = 16) -> list[list[str]]:
    """The ASR model's text for every ``(start, end)`` span of every waveform, a list per waveform."""
    margin = sampling_rate // 20  # 50 ms either side: a turn's first and last phones
    clips, owners = [], []
    for i, (wave, turns) in enumerate(zip(audio, spans)):
        for start, end in turns:
            clip = wave[max(start - margin, 0) : end + margin].numpy()
            if len(clip) > sampling_rate // 10:
                clips.append(clip)
                owners.append(i)
    texts = [[] for _ in audio]
    for begin in range(0, len(clips), batch_size):
        hyps = asr.generate(clips[begin : begin + batch_size], sampling_rate=sampling_rate)
        for owner, hyp in zip(owners[begin : begin + batch_size], hyps):
            texts[owner].append(hyp)
    return texts


def evaluate_duplex(model, cuts: list, batch_size: int = 8, normalize: str = "english", issues=None,
                    asr=None) -> tuple[list[dict], dict, float]:
    """What ``slmzoo eval`` reports for a duplex model: the agent text's BLEU, exact conversations and right
    answers; with ``asr``, the same of its transcribed speech (ASR-BLEU, NeMo's validation metric) and the ceiling:
    the codec's reconstruction of the reference answers, transcribed the same way."""
    records = transcribe_duplex(model, cuts, batch_size, decode_audio=asr is not None, issues=issues)
    text = score_texts([r["reference"] for r in records], [r["text"] for r in records], normalize)
    metrics = {"num_conversations": len(records), "num_answers": sum(len(r["reference_turns"]) for r in records),
               "text_bleu": text["bleu"], "text_exact": text["exact"], "answer_accuracy": answer_accuracy(records)}
    if asr is not None:
        rate = model.codec.sampling_rate
        spoken = transcribe_spans(asr, [r["audio"] for r in records], [r["speech_turns"] for r in records], rate)
        for record, turns in zip(records, spoken):
            record["asr_turns"] = turns
        metrics["asr_bleu"] = score_texts([r["reference"] for r in records],
                                          [" ".join(r["asr_turns"]) for r in records], normalize)["bleu"]
        metrics["asr_answer_accuracy"] = answer_accuracy(records, turns_key="asr_turns")
        metrics.update(codec_ceiling(model, asr, cuts, records, normalize))
    return records, metrics, sum(r["duration"] for r in records)


@torch.no_grad()
def codec_ceiling(model, asr, cuts: list, records: list[dict], normalize: str) -> dict:
    """The reference agent speech through the codec (encode, decode) and the ASR model: the best the generated
    speech can score."""
    from slmzoo_plugins.duplex.dataset import load_target_audio, pad_waves

    by_id = {c.id: c for c in cuts}
    rate = model.codec.sampling_rate
    audio, spans = [], []
    for record in records:
        cut = by_id[record["id"]]
        wave, lengths = pad_waves([load_target_audio(cut, rate)])
        codes, frames = model.codec.encode(wave.to(model.device), lengths.to(model.device))
        decoded, _ = model.codec.decode(codes, frames)
        audio.append(decoded[0].cpu())
        spans.append([(round(s.start * rate), round(s.end * rate)) for s in sorted(cut.supervisions, key=lambda s: s.start)
                      if s.speaker in model.settings.output_roles and s.text])
    spoken = transcribe_spans(asr, audio, spans, rate)
    ceiling = [{**r, "codec_turns": turns} for r, turns in zip(records, spoken)]
    return {"codec_asr_bleu": score_texts([r["reference"] for r in records], [" ".join(t) for t in spoken],
                                          normalize)["bleu"],
            "codec_answer_accuracy": answer_accuracy(ceiling, turns_key="codec_turns")}


def score_texts(references: list[str], hypotheses: list[str], normalize: str = "english") -> dict:
    """Corpus BLEU and the exact-match rate of normalised hypotheses."""
    import sacrebleu

    norm = normalizer(normalize)
    refs, hyps = [" ".join(norm(r).split()) for r in references], [" ".join(norm(h).split()) for h in hypotheses]
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score if refs else 0.0
    exact = sum(r == h for r, h in zip(refs, hyps)) / max(len(refs), 1)
    return {"bleu": bleu, "exact": exact, "num": len(refs)}


def answer_accuracy(records: list[dict], normalize: str = "basic", turns_key: str = "turns") -> float:
    """Share of the reference agent answers whose turn (in order, from ``record[turns_key]``) is exactly right."""
    base = normalizer(normalize)
    norm = lambda text: " ".join(base(text).split())  # noqa: E731 - the normalizers may keep edge spaces
    right = total = 0
    for record in records:
        turns = record[turns_key]
        for i, reference in enumerate(record["reference_turns"]):
            total += 1
            right += i < len(turns) and norm(turns[i]) == norm(reference)
    return right / max(total, 1)
