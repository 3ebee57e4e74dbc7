"""Speech out of the discrete-unit cards (``unit_speechlm``): unit tokens in the vocabulary and the LM head,
teacher-forced unit targets, the ``unit_hifigan`` vocoder (against transformers' SeamlessM4TCodeHifiGan) and
``slmzoo generate ... --out`` for a tiny SpeechGPT."""

import pytest
import torch

import slmzoo
from slmzoo.prompting import IGNORE_INDEX
from tests.conftest import speechlike

PROMPT = "Respond to the speech"
ANSWER_UNITS = [5, 9, 9, 2, 30]  # one repeat: the vocoder collapses it and predicts durations


def tiny(card="speechgpt", *overrides):
    torch.manual_seed(0)
    return slmzoo.build(slmzoo.load_card(card, preset="tiny", overrides=["train.freeze=[encoder]", "llm.lora=null",
                                                                         *overrides]))


def vocoder(**options):
    from slmzoo.card.validate import resolve_block
    from slmzoo.builder import BuildContext

    block = {"type": "unit_hifigan", "config": {
        "unit_hifi_gan_vocab_size": 16, "unit_embed_dim": 8, "upsample_initial_channel": 16, "upsample_rates": [4, 5],
        "upsample_kernel_sizes": [8, 11], "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]],
        "spkr_embed_dim": 4, "lang_embed_dim": 2, "vocoder_num_spkrs": 3, "vocoder_num_langs": 2}, **options}
    spec, resolved = resolve_block("vocoder", block)
    torch.manual_seed(0)
    return BuildContext(card=None).build(spec, resolved, "vocoder").eval()


@pytest.fixture(scope="module")
def speaker(tmp_path_factory):
    """A tiny SpeechGPT taught one spoken answer (units only) to one question, saved whole."""
    model = tiny()
    wave = speechlike(0.4)
    batch = model.prepare_batch([wave], [PROMPT], ["<|unit|>"], response_units=[ANSWER_UNITS])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.eval()  # no dropout: the same units heard every step, a deterministic few seconds
    for _ in range(150):
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    folder = tmp_path_factory.mktemp("speechgpt") / "model"
    model.save_pretrained(folder)
    return model, wave, folder


def test_unit_tokens_extend_the_vocabulary_and_the_head():
    model = tiny()
    fusion, llm = model.fusion, model.llm
    assert fusion.unit_offset == llm.input_embeddings().weight.shape[0] and fusion.num_units == 64
    ids = torch.tensor([[65, fusion.unit_offset + 3, fusion.unit_offset + 63]])
    embeds = fusion.embed_tokens(llm, ids)
    assert torch.equal(embeds[0, 0], llm.embed(ids[:, :1])[0, 0])
    assert torch.equal(embeds[0, 1:], fusion.unit_embeddings.weight[[3, 63]])
    with pytest.raises(ValueError, match="past the 64 unit tokens"):
        fusion.embed_tokens(llm, ids + 1)
    hidden = torch.randn(1, 2, llm.hidden_size)
    logits = fusion.head(llm, hidden)
    assert logits.shape[-1] == fusion.unit_offset + 64
    assert torch.allclose(logits[..., : fusion.unit_offset], llm.head(hidden))
    assert torch.allclose(logits[..., fusion.unit_offset:], hidden @ fusion.unit_head.weight.T)
    tied = tiny("voxtlm")  # OPT ties its head to its embeddings: so do the unit rows
    assert tied.fusion.unit_head is None
    out = tied.fusion.head(tied.llm, hidden[..., :64])
    assert torch.allclose(out[..., tied.fusion.unit_offset:], hidden[..., :64] @ tied.fusion.unit_embeddings.weight.T)


def test_a_card_that_speaks_needs_output_units():
    with pytest.raises(ValueError, match="output_units"):
        tiny("speechgpt", "fusion.output_units=false")


def test_teacher_forced_unit_targets_reach_the_unit_rows():
    model = tiny()
    model.eval()  # the encoder's dropout off: the units heard below are those the forward heard
    batch = model.prepare_batch([speechlike(0.6), speechlike(0.35, 1)], [PROMPT, None],
                                ["ok <sosp><|unit|><eosp>", "nine"], response_units=[[3, 3, 7, 1], None])
    offset = model.fusion.unit_offset
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert [t - offset for t in labelled if t >= offset] == [3, 3, 7, 1]  # in the answer, in order
    assert not (batch["input_ids"] == model.audio_token_id).sum(-1).gt(1).any()  # the answer's tag is gone
    out = model(batch)
    assert out.logits.shape[-1] == offset + 64
    out.loss.backward()
    head = model.fusion.unit_head.weight.grad.norm(dim=1)
    others = torch.ones(64, dtype=torch.bool)
    others[[1, 3, 7]] = False
    assert head[[1, 3, 7]].min() > head[others].max()  # the target rows learn most
    embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
    heard = set(torch.cat(embeds).tolist())
    grads = model.fusion.unit_embeddings.weight.grad.abs().sum(1)
    assert all(grads[u] > 0 for u in (1, 3, 7))  # the answer's units are inputs too (teacher forcing)
    assert all(grads[u] == 0 for u in range(64) if u not in heard | {1, 3, 7})
    with pytest.raises(ValueError, match="audio tag once"):
        model.prepare_batch([speechlike(0.3)], [PROMPT], ["no tag"], response_units=[[1]])


def test_a_spoken_answer_becomes_a_waveform_of_its_frames_times_the_hop(speaker):
    model, wave, _ = speaker
    answer = model.generate_speech([wave], prompts=[PROMPT], max_new_tokens=20)
    assert answer.units[0].tolist() == ANSWER_UNITS and answer.texts == [""]
    units = torch.tensor([ANSWER_UNITS])
    frames = int(model.vocoder.frames(units, torch.tensor([5]))[0])
    assert frames >= 4  # repeats collapsed: 4 units, each at least one frame long
    assert answer.sampling_rate == 16000 and model.vocoder.hop_length == 320
    assert answer.audio[0].shape == (frames * 320,)
    assert model.generate([wave], prompts=[PROMPT], max_new_tokens=4) == [""]  # text only: it ends the turn


def test_the_vocoder_gives_each_unit_its_frames():
    plain = vocoder(duration_prediction=False)
    units = torch.tensor([[1, 1, 4, 15, 0], [7, 2, 0, 0, 0]])
    audio, samples = plain(units, torch.tensor([5, 2]))
    assert samples.tolist() == [5 * 20, 2 * 20] and audio.shape == (2, 100)  # hop 4 * 5 = 20
    alone, _ = plain(units[1:, :2], torch.tensor([2]))
    assert torch.equal(audio[1, :40], alone[0])  # a clip's speech does not depend on its batch companions
    predicted = vocoder()
    frames = predicted.frames(units, torch.tensor([5, 2]))
    audio, samples = predicted(units, torch.tensor([5, 2]))
    assert torch.equal(samples, frames * 20) and frames[0] >= 4  # [1, 1, 4, 15, 0] has 4 runs
    with pytest.raises(ValueError, match="outside"):
        plain(torch.tensor([[16]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="vocoder.speaker"):
        vocoder(speaker=3)


def test_the_vocoder_loads_a_save_pretrained_folder_and_matches_transformers(tmp_path):
    from transformers import SeamlessM4TConfig
    from transformers.models.seamless_m4t.modeling_seamless_m4t import SeamlessM4TCodeHifiGan

    config = dict(vocoder().standalone_options()["config"])
    torch.manual_seed(1)
    reference = SeamlessM4TCodeHifiGan(SeamlessM4TConfig(**config)).eval()
    reference.save_pretrained(tmp_path / "hifigan")
    loaded = vocoder(pretrained=str(tmp_path / "hifigan"), config=None, speaker=2, language=1)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    units = torch.tensor([[3, 8, 8, 2, 11, 6]])  # no repeats after the first: transformers does not collapse them
    audio, samples = loaded(units[:, [0, 1, 3, 4, 5]], torch.tensor([5]))
    with torch.no_grad():
        expected, _ = reference(units[:, [0, 1, 3, 4, 5]], torch.tensor([[2]]), torch.tensor([[1]]))
    assert torch.allclose(audio[0, : int(samples[0])], expected[0], atol=1e-6)
    from slmzoo.errors import PretrainedLoadError

    with pytest.raises(PretrainedLoadError, match="shape mismatch"):
        vocoder(pretrained=str(tmp_path / "hifigan"), config={**config, "unit_hifi_gan_vocab_size": 32})


def test_generate_out_writes_the_spoken_answer_of_a_tiny_speechgpt(speaker, tmp_path):
    import json

    import soundfile as sf
    from typer.testing import CliRunner

    from slmzoo.cli.main import app

    model, wave, folder = speaker
    question = tmp_path / "q.wav"
    sf.write(question, wave.numpy() if hasattr(wave, "numpy") else wave, 16000)
    result = CliRunner().invoke(app, ["generate", str(folder), "--audio", str(question), "--prompt", PROMPT,
                                      "--out", str(tmp_path / "answer.wav"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["speech"] == str(tmp_path / "answer.wav")
    spoken, rate = sf.read(tmp_path / "answer.wav")
    frames = int(model.vocoder.frames(torch.tensor([ANSWER_UNITS]), torch.tensor([5]))[0])
    assert rate == 16000 and len(spoken) == frames * 320


def test_training_data_carries_the_spoken_answers_units(tmp_path):
    import json

    import soundfile as sf

    from slmzoo.data.manifests import eval_cuts

    model = tiny()
    items = []
    for i, (answer, units) in enumerate([("<sosp><|unit|><eosp>", [4, 4, 60]), ("nine", None)]):
        sf.write(tmp_path / f"{i}.wav", speechlike(0.3, i), 16000)
        items.append({"audio_filepath": f"{i}.wav", "duration": 0.3, "question": PROMPT, "answer": answer,
                      **({"answer_units": units} if units else {})})
    manifest = tmp_path / "spoken.jsonl"
    manifest.write_text("".join(json.dumps(item) + "\n" for item in items))
    cuts = eval_cuts(manifest)
    batch = model.training_dataset(model.card.train)[(0, cuts)]
    offset = model.fusion.unit_offset
    spoken = [t - offset for t in batch["labels"][0].tolist() if t >= offset]
    assert spoken == [4, 4, 60] and not (batch["labels"][1] >= offset).any()
    assert torch.isfinite(model(batch).loss)
