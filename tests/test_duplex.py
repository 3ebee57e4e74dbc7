"""The duplex speech-to-speech plugin: NeMo's text channel (its golden example), the frame layout of
``prepare_inputs``, the loss normalisation, cached frame-by-frame decoding, batch invariance, the corpus reader and
the saved-model round trip."""

from __future__ import annotations

import pytest
import torch
from lhotse import SupervisionSegment

import slmzoo
from slmzoo.data.manifests import eval_cuts
from slmzoo_plugins.duplex.token_channel import TextChannelIds, build_token_channel, text_to_ids
from tests.conftest import REPO, speechlike

DUPLEX = REPO.parent / "shared" / "data" / "duplex"


def word_tokenizer(vocab: dict[str, int]):
    """A word-level tokenizer with the given ids (TinyLlama's, for NeMo's golden example)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_token_channel_is_nemos_golden_example():
    """NeMo's tests/collections/speechlm2/test_duplex_s2s.py: a 1 s cut at 16 kHz (13 frames), TinyLlama ids."""
    tokenizer = word_tokenizer({"<unk>": 0, "<s>": 1, "</s>": 2, "ok": 3431, "okay": 20759, "hi": 6324,
                                "hello": 22172})
    turns = [("hi", 0.0, 0.1, "user"), ("hello", 0.3, 0.1, "assistant"), ("ok", 0.5, 0.1, "user"),
             ("okay", 0.6, 0.4, "assistant")]
    supervisions = [SupervisionSegment(id=str(i), recording_id="r", start=s, duration=d, text=t, speaker=who)
                    for i, (t, s, d, who) in enumerate(turns)]
    ids = TextChannelIds(bos=1, eos=2, pad=0)
    channel = lambda roles: build_token_channel(supervisions, 1.0, 0.08, 16000, text_to_ids(tokenizer), ids, roles)
    assert channel(["assistant"]) == [0, 0, 0, 0, 1, 2, 0, 0, 1, 20759, 0, 0, 0]
    assert channel(["user"]) == [1, 2, 0, 0, 0, 0, 1, 3431, 2, 0, 0, 0, 0]


@pytest.fixture(scope="module", params=["duplex-s2s", "duplex-s2s-speech-decoder"])
def model(request):
    torch.manual_seed(0)
    return slmzoo.build(slmzoo.load_card(request.param, preset="tiny")).eval()


@pytest.fixture(scope="module")
def batch(model):
    cuts = eval_cuts(DUPLEX / "dev_cuts.jsonl")[:3]
    return model.training_dataset(model.card.train)[(0, cuts)]


def test_dataset_reads_the_corpus_channels_at_their_rates(model):
    cuts = [c for c in eval_cuts(DUPLEX / "dev_cuts.jsonl") if len(c.supervisions) == 4][:2]
    batch = model.training_dataset(model.card.train)[(0, cuts)]
    answers = [[s.text for s in c.supervisions if s.speaker == "assistant"] for c in cuts]
    assert batch["target_texts"] == [" ".join(a) for a in answers]  # both agent turns, joined
    # user at the encoder's 16 kHz, agent at the codec's 24 kHz, the same duration
    assert torch.allclose(batch["audio_lens"] / 16000, batch["target_audio_lens"] / model.codec.sampling_rate,
                          atol=1e-3)
    for tokens in batch["target_tokens"]:
        assert int((tokens == model.text_ids.bos).sum()) == 2  # one BOS per agent turn
        assert int((tokens == model.text_ids.eos).sum()) == 2


def test_prepare_inputs_lays_the_streams_out_as_nemo(model, batch):
    with torch.no_grad():
        inputs = model.prepare_inputs(batch)
        codes, _ = model.speech_codes(batch["target_audio"], batch["target_audio_lens"])
    frames = inputs.text_labels.shape[1] + 1
    text = batch["target_tokens"][:, :frames]
    vocabulary = model.vocabulary
    # targets: the text of frame t + 1 and the codes of frame t, speech BOS / EOS wherever the text has them
    assert torch.equal(inputs.text_labels, text[:, 1:])
    expected = codes[:, : frames - 1].clone()
    expected[text[:, : frames - 1] == model.text_ids.bos] = vocabulary.bos
    expected[text[:, : frames - 1] == model.text_ids.eos] = vocabulary.eos
    assert torch.equal(inputs.audio_labels, expected)
    assert (inputs.audio_labels == vocabulary.bos).any() and (inputs.audio_labels == vocabulary.eos).any()
    # inputs: delay codes at frame 0, then the codes of the frame before
    assert (inputs.audio_in[:, 0] == vocabulary.delay).all()
    assert torch.equal(inputs.audio_in[:, 1:], inputs.audio_labels[:, :-1])
    assert inputs.lengths.tolist() == [int(n) - 1 for n in torch.minimum(
        model.codec.code_lengths(batch["target_audio_lens"]), (batch["audio_lens"] + 1279) // 1280)]


def test_loss_is_weighted_and_normalised_by_valid_frames(model, batch):
    with torch.no_grad():
        out = model(batch)
    weights = model.settings
    assert torch.allclose(out.loss, weights.text_loss_weight * out.losses["text_loss"]
                          + weights.audio_loss_weight * out.losses["audio_loss"])
    assert out.num_tokens == int(model.prepare_inputs(batch).lengths.sum())
    # padded frames count in NeMo's sum; the masked variant leaves them out
    model.settings = weights.model_copy(update={"masked_loss": True})
    try:
        with torch.no_grad():
            masked = model(batch)
    finally:
        model.settings = weights
    assert masked.losses["text_loss"] < out.losses["text_loss"]


@pytest.mark.parametrize("card", ["duplex-s2s", "duplex-s2s-speech-decoder"])
def test_training_reaches_every_trainable_weight_and_never_the_codec(card, batch):
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card(card, preset="tiny", overrides=["encoder.config.layerdrop=0.0"])).train()
    assert not model.codec.training  # frozen codec stays in inference mode
    model(batch).loss.backward()
    params = dict(model.named_parameters())
    assert not any(p.requires_grad for n, p in params.items() if n.startswith("codec."))
    missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not missing, missing[:8]


def test_user_transcript_ctc_trains_the_user_channel_when_asked(batch):
    """``duplex.user_ctc_weight``: the user's turns (``source_ids``) as a CTC target on the perception output; off
    by default (NeMo), and then the model has no such head."""
    cuts = eval_cuts(DUPLEX / "dev_cuts.jsonl")[:3]
    users = [" ".join(s.text for s in sorted(c.supervisions, key=lambda s: s.start) if s.speaker == "user")
             for c in cuts]
    torch.manual_seed(0)
    plain = slmzoo.build(slmzoo.load_card("duplex-s2s", preset="tiny"))
    assert plain.user_ctc is None and "user_ctc_loss" not in plain(batch).losses
    assert [plain.tokenizer.decode(ids[:n]) for ids, n in zip(batch["source_ids"], batch["source_id_lens"])] == users
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("duplex-s2s", preset="tiny", overrides=[
        "duplex.user_ctc_weight=0.5", "encoder.config.layerdrop=0.0"])).train()
    out = model(batch)
    ctc = out.losses["user_ctc_loss"]
    assert torch.isfinite(ctc) and ctc > 0
    weights = model.settings
    assert torch.allclose(out.loss, weights.text_loss_weight * out.losses["text_loss"]
                          + weights.audio_loss_weight * out.losses["audio_loss"] + 0.5 * ctc)
    ctc.backward()  # the transcript reaches the encoder on its own, not only through the agent's answers
    assert model.encoder.parameters().__next__().grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("llm."))


def test_turns_command_cuts_a_channel_into_its_turns(tmp_path):
    from typer.testing import CliRunner

    from slmzoo.cli.main import app
    from slmzoo_plugins.duplex.dataset import load_target_audio

    out = tmp_path / "turns.jsonl"
    result = CliRunner().invoke(app, ["duplex", "turns", str(DUPLEX / "dev_cuts.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    turns = eval_cuts(out)
    cuts = {c.id: c for c in eval_cuts(DUPLEX / "dev_cuts.jsonl")}
    answers = [s for c in cuts.values() for s in c.supervisions if s.speaker == "assistant"]
    assert len(turns) == len(answers) == 64  # the README's dev split
    turn = max(turns, key=lambda t: t.duration)
    source = cuts[turn.id.rsplit("_turn_", 1)[0]]
    reference = next(s for s in source.supervisions if s.id == turn.id)
    assert turn.supervisions[0].text == reference.text and turn.recording.sampling_rate == 22050
    assert abs(turn.duration - (reference.duration + 0.1)) < 1e-6  # 50 ms margins
    # the agent's speech of that turn, not the silent user channel
    wave = turn.load_audio()[0]
    full = load_target_audio(source, 22050)
    begin = round((reference.start - 0.05) * 22050)
    assert abs(len(wave) - round(turn.duration * 22050)) <= 1
    assert torch.allclose(torch.from_numpy(wave[:1000]), torch.from_numpy(full[begin : begin + 1000]), atol=1e-4)
    bad = CliRunner().invoke(app, ["duplex", "turns", str(DUPLEX / "dev_cuts.jsonl"), "--out", str(out),
                                   "--channel", "both"])
    assert bad.exit_code == 2 and "agent or user" in bad.output


def test_words_command_saves_one_token_per_corpus_word(tmp_path):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from slmzoo.cli.main import app

    result = CliRunner().invoke(app, ["duplex", "words", str(DUPLEX / "dev_cuts.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for cut in eval_cuts(DUPLEX / "dev_cuts.jsonl")[:10]:
        for turn in cut.supervisions:
            ids = tokenizer(turn.text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(turn.text.split()) and tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == turn.text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")


def test_an_inline_llm_config_is_sized_to_a_saved_tokenizer(tmp_path):
    """The tiny preset's inline llama config names no vocab_size: with the corpus's word tokenizer the LLM has one
    row per token (21), not llama's default 32000 (which made the embeddings 97% of the model and the 32000-way
    head most of a training step)."""
    from slmzoo_plugins.duplex.turns import write_word_tokenizer

    write_word_tokenizer(DUPLEX / "dev_cuts.jsonl", tmp_path / "words")
    model = slmzoo.build(slmzoo.load_card("duplex-s2s", preset="tiny",
                                          overrides=[f"llm.tokenizer={tmp_path / 'words'}"]))
    rows = len(model.tokenizer)
    assert model.llm.input_embeddings().weight.shape[0] == rows < 100
    assert model.llm.head(torch.zeros(1, 1, model.llm.hidden_size)).shape[-1] == rows


def test_cached_frame_loop_equals_a_full_forward(model):
    """Each greedy step with the KV cache predicts what a teacher-forced pass over the generated channels does."""
    waves = [speechlike(1.3, 0), speechlike(0.9, 1)]
    with torch.no_grad():
        out = model.generate_duplex(waves, 16000, decode_audio=False)
        user, _ = model.perceive(*_padded(waves))
        text_in = torch.cat([torch.full_like(out.text_tokens[:, :1], model.text_ids.pad), out.text_tokens[:, :-1]], 1)
        codes_in = torch.cat([torch.full_like(out.audio_codes[:, :1], model.vocabulary.delay),
                              out.audio_codes[:, :-1]], 1)
        embeds = user * model.settings.user_channel_weight + model.frame_embeddings(text_in, codes_in)
        hidden, _ = model.llm.hidden_states(embeds, torch.ones(embeds.shape[:2], dtype=torch.long))
        assert torch.equal(model.llm.head(hidden).argmax(-1), out.text_tokens)
        assert torch.equal(model.speech_head(hidden, codes_in).argmax(-1), out.audio_codes)


def _padded(waves):
    from slmzoo_plugins.duplex.dataset import pad_waves

    return pad_waves(waves)


def test_generation_does_not_depend_on_batch_companions(model):
    short, long = speechlike(0.9, 3), speechlike(1.6, 4)
    with torch.no_grad():
        alone = model.generate_duplex([short], 16000)
        batched = model.generate_duplex([long, short], 16000)
    n = int(alone.lengths[0])
    assert batched.lengths[1] == n
    assert torch.equal(batched.text_tokens[1, :n], alone.text_tokens[0, :n])
    assert torch.equal(batched.audio_codes[1, :n], alone.audio_codes[0, :n])
    assert batched.texts[1] == alone.texts[0]
    # speech comes out at the codec's rate, frame-aligned with the input: one codec frame per 80 ms frame
    assert alone.sampling_rate == model.codec.sampling_rate
    assert alone.audio[0].shape[0] == n * model.codec.samples_per_frame


def test_a_duplex_model_takes_no_prompt(model):
    with pytest.raises(ValueError, match="no prompt"):
        model.generate([speechlike(0.5)], prompts=["Transcribe the audio."])
    assert isinstance(model.generate([speechlike(0.5)])[0], str)


def test_saved_duplex_model_loads_and_answers_the_same(model, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    again = slmzoo.from_pretrained(tmp_path / "saved")
    assert again.text_ids == model.text_ids  # the added BOS token is there again (byte tokenizer: no files)
    wave = [speechlike(1.1, 5)]
    with torch.no_grad():
        assert torch.equal(again.generate_duplex(wave, 16000, decode_audio=False).text_tokens,
                           model.generate_duplex(wave, 16000, decode_audio=False).text_tokens)


# -- the spectral k-means codec -------------------------------------------------------------------------------
def spectral_codec(tmp_path, waves, size=32):
    """A ``spectral_kmeans`` codec fitted on ``waves`` (random spectra before fitting)."""
    import numpy as np

    from slmzoo.builder import BuildContext

    card = slmzoo.load_card("duplex-s2s", preset="tiny", overrides=["codec={type: spectral_kmeans, "
                                                                    f"codebook_size: {size}, griffin_lim_iters: 8}}"])
    codec = BuildContext(card=card).build_block("codec", card.data["codec"], "codec")
    np.save(tmp_path / "codebook.npy", codec.fit([torch.from_numpy(w) for w in waves], size, iters=10).numpy())
    fitted = slmzoo.load_card("duplex-s2s", preset="tiny", overrides=[
        f"codec={{type: spectral_kmeans, codebook: {tmp_path / 'codebook.npy'}, griffin_lim_iters: 8}}"])
    return codec, BuildContext(card=fitted).build_block("codec", fitted.data["codec"], "codec")


def test_spectral_codec_codes_80ms_frames_and_reconstructs_what_it_was_fitted_on(tmp_path):
    waves = [speechlike(1.0, 0), speechlike(0.7, 1)]
    random, codec = spectral_codec(tmp_path, waves)
    assert (codec.num_codebooks, codec.frame_rate, codec.samples_per_frame) == (8, 12.5, 1280)
    audio, lengths = _padded(waves)
    codes, frames = codec.encode(audio, lengths)
    assert codes.shape == (2, 8, 13) and frames.tolist() == [13, 9]  # a partial last frame counts
    assert int(codes.max()) < codec.codebook_size
    decoded, samples = codec.decode(codes, frames)
    assert decoded.shape == (2, 13 * 1280) and samples.tolist() == [13 * 1280, 9 * 1280]

    def error(c):  # log-magnitude error of the reconstruction, over the clip
        rebuilt, _ = c.decode(*c.encode(audio[:1], lengths[:1]))
        target = c.spectra(c._frames(audio[:1]))
        return float((c.spectra(rebuilt[:, : target.shape[1] * c.hop]) - target).abs().mean())

    assert error(codec) < 0.5 * error(random)


def test_codec_fit_command_writes_a_codebook_the_card_uses(tmp_path):
    from typer.testing import CliRunner

    from slmzoo.cli.main import app

    out = tmp_path / "codec.npy"
    result = CliRunner().invoke(app, ["codec", "fit", "duplex-s2s", "--preset", "tiny", "--set",
                                      "codec={type: spectral_kmeans}", "--data", str(DUPLEX / "dev_cuts.jsonl"),
                                      "--max-utterances", "3", "--codes", "16", "--iters", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"--set codec.codebook={out}" in result.output
    import numpy as np

    assert np.load(out).shape == (16, 257)
    refused = CliRunner().invoke(app, ["codec", "fit", "duplex-s2s", "--preset", "tiny", "--data",
                                       str(DUPLEX / "dev_cuts.jsonl"), "--out", str(out)])
    assert refused.exit_code == 2 and "spectral_kmeans" in refused.output


# -- the autoregressive speech decoder -------------------------------------------------------------------------
def test_speech_decoder_is_causal_and_steps_as_it_runs_whole():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("duplex-s2s-speech-decoder", preset="tiny")).eval()
    head = model.speech_head
    assert not head.embeds_into_llm  # this variant's LLM input has no speech codes
    hidden = torch.randn(2, 9, model.llm.hidden_size)
    codes = torch.randint(0, head.vocabulary.size, (2, 9, head.vocabulary.num_codebooks))
    with torch.no_grad():
        whole = head(hidden, codes)
        changed = hidden.clone()
        changed[:, 6:] += 1.0
        assert torch.allclose(head(changed, codes)[:, :6], whole[:, :6], atol=1e-6)  # the future is not seen
        assert not torch.allclose(head(changed, codes)[:, 6:], whole[:, 6:])
        state, steps = None, []
        for t in range(9):
            logits, state = head.step(hidden[:, t : t + 1], codes[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), whole, atol=1e-5)


# -- command line: a spoken answer, duplex evaluation ------------------------------------------------------------
def test_generate_writes_the_spoken_answer(tmp_path):
    import soundfile as sf
    from typer.testing import CliRunner

    from slmzoo.cli.main import app

    cut = eval_cuts(DUPLEX / "dev_cuts.jsonl")[0]
    user = tmp_path / "user.wav"
    sf.write(user, cut.load_audio()[0], 16000)
    result = CliRunner().invoke(app, ["generate", "duplex-s2s", "--preset", "tiny", "--audio", str(user),
                                      "--out", str(tmp_path / "answer.wav"), "--json"])
    assert result.exit_code == 0, result.output
    wave, rate = sf.read(tmp_path / "answer.wav")
    assert rate == 24000  # the codec's rate (tiny Mimi), one 80 ms codec frame per user frame
    assert abs(len(wave) / rate - cut.duration) <= 0.16  # within 2 frames (causal downsampling rounds up)
    refused = CliRunner().invoke(app, ["generate", "salm", "--preset", "tiny", "--audio", str(user),
                                       "--out", str(tmp_path / "x.wav")])
    assert refused.exit_code == 2 and "text only" in refused.output


def test_speech_turns_are_read_off_the_control_codes(model):
    from slmzoo_plugins.duplex.evaluation import speech_turns

    v, size = model.vocabulary, model.codec.samples_per_frame
    codes = torch.zeros(12, v.num_codebooks, dtype=torch.long)
    codes[2], codes[6], codes[8] = v.bos, v.eos, v.bos  # one closed turn, one still speaking at the end
    assert speech_turns(model, codes, 11) == [(3 * size, 6 * size), (9 * size, 11 * size)]


def test_answer_accuracy_counts_each_answer_in_order():
    from slmzoo_plugins.duplex.evaluation import answer_accuracy, score_texts

    records = [{"reference_turns": ["five", "two nine six"], "turns": ["five", "two nine"]},
               {"reference_turns": ["eight"], "turns": ["Eight."]}, {"reference_turns": ["one"], "turns": []}]
    assert answer_accuracy(records) == 2 / 4
    assert score_texts(["five", "one"], ["five", "one"])["exact"] == 1.0


def test_eval_reports_text_and_spoken_answers_with_an_asr_model(tmp_path):
    from typer.testing import CliRunner

    from slmzoo.cli.main import app

    torch.manual_seed(0)
    slmzoo.build(slmzoo.load_card("salm", preset="tiny")).save_pretrained(tmp_path / "asr")
    result = CliRunner().invoke(app, ["eval", "duplex-s2s", "--preset", "tiny", "--data", str(DUPLEX / "dev_cuts.jsonl"),
                                      "--limit", "2", "--asr", str(tmp_path / "asr"), "--json",
                                      "--out", str(tmp_path / "hyps.jsonl")])
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads(result.output)
    assert metrics["num_conversations"] == 2 and metrics["num_answers"] >= 2
    for key in ("text_bleu", "answer_accuracy", "asr_bleu", "asr_answer_accuracy", "codec_asr_bleu",
                "codec_answer_accuracy"):
        assert key in metrics and metrics[key] is not None, key
    lines = (tmp_path / "hyps.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "reference_turns" in json.loads(lines[0])
    text_only = CliRunner().invoke(app, ["eval", "salm", "--preset", "tiny", "--data", str(DUPLEX / "dev_cuts.jsonl"),
                                         "--limit", "1", "--asr", str(tmp_path / "asr")])
    assert text_only.exit_code == 2 and "generates text" in text_only.output


def test_validation_skips_an_unreadable_clip(model):
    good = eval_cuts(DUPLEX / "dev_cuts.jsonl")[0]
    bad = eval_cuts(DUPLEX / "dev_cuts.jsonl")[1]
    bad.recording.sources[0].source = str(DUPLEX / "audio" / "missing.flac")
    metrics = model.decode_metrics([good, bad], batch_size=2)
    assert set(metrics) == {"val_text_bleu", "val_text_exact", "val_answers_right"}
