"""Manifests (NeMo and Lhotse), bad-data handling, mixing, bucketing and batch construction."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from slmzoo.card.schema import AugmentConfig
from slmzoo.data import (
    DataError,
    DataIssues,
    SpeechDataset,
    make_loader,
    make_sampler,
    open_manifest,
    parse_manifest_spec,
    training_cuts,
)
from slmzoo.prompting import IGNORE_INDEX
from tests.fakes import tiny_model_card, write_corpus


@pytest.fixture(scope="module")
def formatter():
    from slmzoo.builder import build

    return build(tiny_model_card()).processor


def _dataset(formatter, **kw):
    return SpeechDataset(formatter, 16000, **kw)


def test_nemo_manifest_relative_paths_offset_and_qa(tmp_path):
    path = write_corpus(tmp_path, n=3, extra=[
        {"audio_filepath": "audio/u000.flac", "offset": 0.1, "duration": 0.2, "question": "What digit?",
         "answer": "one", "id": "qa"}])
    cuts = list(open_manifest(path))
    assert [c.id for c in cuts] == ["u000", "u001", "u002", "qa"]
    assert cuts[0].recording.sources[0].source == str(tmp_path / "audio" / "u000.flac")
    assert cuts[3].start == pytest.approx(0.1) and cuts[3].duration == pytest.approx(0.2)
    assert cuts[3].load_audio().shape == (1, 3200)
    assert cuts[3].custom == {"question": "What digit?", "answer": "one"}


def test_lhotse_manifest_read_lazily(tmp_path):
    from lhotse import CutSet

    nemo = write_corpus(tmp_path, n=4)
    lhotse_path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(open_manifest(nemo)).to_file(lhotse_path)
    cuts = open_manifest(lhotse_path)
    assert cuts.is_lazy
    assert [c.id for c in cuts] == ["u000", "u001", "u002", "u003"]


def test_manifest_spec_weights():
    assert parse_manifest_spec("a/b.jsonl:0.7") == (parse_manifest_spec("a/b.jsonl")[0], 0.7)
    assert parse_manifest_spec("a/b.jsonl")[1] == 1.0


def test_weighted_mix_follows_weights(tmp_path):
    a = write_corpus(tmp_path / "a", n=5, seed=1)
    b = write_corpus(tmp_path / "b", n=5, seed=2)
    mixed = training_cuts([f"{a}:0.8", f"{b}:0.2"], seed=0)
    ids = [c.recording.sources[0].source for _, c in zip(range(400), mixed)]  # endless: repeats each manifest
    share_a = sum("/a/" in s for s in ids) / len(ids)
    assert 0.7 < share_a < 0.9


def _bad_corpus(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype="float32"), 16000)
    sf.write(tmp_path / "nan.wav", np.full(8000, np.nan, dtype="float32"), 16000, subtype="FLOAT")
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all")
    return write_corpus(tmp_path, n=4, extra=[
        {"id": "missing", "audio_filepath": "nope.flac", "duration": 1.0, "text": "one"},
        {"id": "empty", "audio_filepath": "empty.wav", "duration": 0.5, "text": "one"},
        {"id": "nan", "audio_filepath": "nan.wav", "duration": 0.5, "text": "one"},
        {"id": "garbage", "audio_filepath": "garbage.wav", "duration": 0.5, "text": "one"},
        {"id": "long", "audio_filepath": "audio/u000.flac", "duration": 0.3, "text": "nine " * 200},
    ])


def test_bad_items_are_skipped_counted_and_named(tmp_path, formatter, caplog):
    issues = DataIssues()
    cuts = list(open_manifest(_bad_corpus(tmp_path), issues))
    batch = _dataset(formatter, max_text_tokens=64)[(0, cuts)]
    issues.merge(batch["issues"])
    assert sorted(batch["ids"]) == ["u000", "u001", "u002", "u003"]
    assert issues.counts == {"missing": 1, "empty": 1, "nan": 1, "unreadable": 1, "too_long": 1}
    assert any("missing" in e for e in issues.examples) and "skipping missing" in caplog.text


def test_strict_stops_at_first_bad_item(tmp_path, formatter):
    with pytest.raises(DataError, match="missing"):
        list(open_manifest(_bad_corpus(tmp_path), DataIssues(strict=True)))
    cuts = [c for c in open_manifest(_bad_corpus(tmp_path)) if c.id == "nan"]
    with pytest.raises(DataError, match="nan: audio has NaN"):
        _dataset(formatter, strict=True)[(0, cuts)]


def test_batch_labels_cover_only_the_response_and_qa_uses_question(tmp_path, formatter):
    path = write_corpus(tmp_path, n=1, extra=[
        {"id": "qa", "audio_filepath": "audio/u000.flac", "duration": 0.3, "question": "Which digit?",
         "answer": "seven"}])
    cuts = list(open_manifest(path))
    batch = _dataset(formatter)[(0, cuts)]
    tok = formatter.tokenizer
    assert batch["audio"].shape[0] == 2 and batch["audio_lens"].tolist() == [len(c.load_audio()[0]) for c in cuts]
    for row, cut in zip(range(2), cuts):
        labels = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
        response = cut.custom["answer"] if cut.custom else cut.supervisions[0].text
        assert tok.decode(labels, skip_special_tokens=True) == response
    prompt_qa = tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert "Which digit?" in prompt_qa and "Transcribe" not in prompt_qa


def test_augmentation_is_deterministic_per_batch_index(tmp_path, formatter):
    cuts = list(open_manifest(write_corpus(tmp_path, n=3)))
    aug = AugmentConfig(speed_perturb=[0.9, 1.1], spec_augment=True, noise_snr=(10, 20), volume=(-3, 3),
                        noise_prob=1.0)
    ds = _dataset(formatter, augment=aug, seed=3)
    a, b, c = ds[(5, cuts)], ds[(5, cuts)], ds[(6, cuts)]
    assert np.array_equal(a["audio"].numpy(), b["audio"].numpy())
    assert not np.array_equal(a["audio"].numpy(), c["audio"].numpy()[:, : a["audio"].shape[1]])
    clean = _dataset(formatter)[(5, cuts)]
    assert not np.array_equal(a["audio"].numpy(), clean["audio"].numpy()[:, : a["audio"].shape[1]])


def test_augmentation_starts_after_start_batch(tmp_path, formatter):
    cuts = list(open_manifest(write_corpus(tmp_path, n=3)))
    aug = AugmentConfig(speed_perturb=[0.9], noise_snr=(10, 20), noise_prob=1.0, start_batch=4)
    ds, clean = _dataset(formatter, augment=aug), _dataset(formatter)
    assert np.array_equal(ds[(3, cuts)]["audio"].numpy(), clean[(3, cuts)]["audio"].numpy())
    assert not np.array_equal(ds[(4, cuts)]["audio"].numpy(), clean[(4, cuts)]["audio"].numpy())


def test_bucketing_sampler_limits_duration_and_groups_similar_lengths(tmp_path, formatter):
    path = write_corpus(tmp_path, n=40)
    sampler = make_sampler(training_cuts([str(path)]), max_duration=4.0, num_buckets=4, seed=0)
    loader = make_loader(_dataset(formatter), sampler, num_workers=0)
    batches = [b for _, b in zip(range(10), loader)]
    assert all(b["duration"] <= 4.0 + 1e-6 for b in batches)
    real = sum(int(b["audio_lens"].sum()) for b in batches)
    padded = sum(b["audio"].numel() for b in batches)
    assert real / padded > 0.8


def test_loader_skip_resumes_the_same_order(tmp_path, formatter):
    path = write_corpus(tmp_path, n=30)

    def ids(skip, workers=0):
        sampler = make_sampler(training_cuts([str(path)]), max_duration=3.0, seed=7)
        loader = make_loader(_dataset(formatter), sampler, skip=skip, num_workers=workers)
        return [b["ids"] for _, b in zip(range(4), loader)]

    full = ids(0)
    assert ids(2)[:2] == full[2:]
    assert ids(0, workers=2) == full
