"""Released checkpoints imported: the same prompts, logits and greedy tokens as the reference implementation.

Each test builds a tiny random release of a transformers-implemented model as the Hub holds it
(tests/releases.py: sharded safetensors with an index, in the legacy layout or v5's, a trained BPE tokenizer, the
processor's files), imports it, and compares with transformers' class and processor on the same audio and
instruction: the prompt's token ids (the reference processor's chat template), the logits over the fused sequence
(1e-4, fp32) and 32 greedy tokens, our side running clips of different lengths as one batch.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import slmzoo
from slmzoo.cli.main import app
from slmzoo.importing import ReleaseError, find_importer, import_checkpoint
from slmzoo.registry import ImporterSpec
from tests.releases import (
    GRANITE_MELS,
    audio_flamingo_3_release,
    canary_qwen_release,
    granite_speech_release,
    qwen2_audio_release,
    ultravox_release,
    voxtral_release,
    weight_names,
)
from tests.test_granite_encoder import granite_feature_extractor
from tests.test_hub import hub  # noqa: F401 (the fixture: a Hub on 127.0.0.1)

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
NEW_TOKENS = 32


def weight_names_of(folder) -> set[str]:
    """The tensor names of a saved checkpoint (one file or shards)."""
    from slmzoo.saving import read_weights

    return set(read_weights(folder))


def _clips() -> list[torch.Tensor]:
    # 1 s and 0.62 s: 9970 samples is where a floor of samples / hop would lose a mel frame the mask counts.
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16000, generator=generator) * 0.1, torch.randn(9970, generator=generator) * 0.1]


def _expand(ids: torch.Tensor, tag: int, count: int) -> list[int]:
    """One audio tag -> ``count`` copies, as the reference processors lay prompts out."""
    out = []
    for token in ids.tolist():
        out += [tag] * count if token == tag else [token]
    return out


def assert_matches_reference(model, reference, inputs_of, clips, instructions, logits_scale: float = 1.0):
    """Our batch of ``clips`` against the reference run on each alone: ``inputs_of(i) -> the reference
    processor's inputs for clip i`` (``input_ids [1, L]`` with the audio tokens expanded, features);
    ``logits_scale`` divides the reference's logits."""
    batch = model.prepare_batch(clips, prompts=instructions)
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
    ours_new = model.generate_ids(clips, prompts=instructions, max_new_tokens=NEW_TOKENS)
    lengths = []
    for i in range(len(clips)):
        inputs = inputs_of(i)
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert _expand(ids, model.audio_token_id, len(embeds[i])) == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            expected = reference(**inputs).logits[0] / logits_scale
            theirs = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0]
        torch.testing.assert_close(logits[i, : len(expected)], expected, atol=1e-4, rtol=1e-4)
        theirs_new = theirs[inputs["input_ids"].shape[1]:].tolist()
        row = ours_new[i].tolist()
        assert row[: len(theirs_new)] == theirs_new
        assert set(row[len(theirs_new):]) <= {model.pad_token_id}
        lengths.append(len(theirs_new))
    return [len(e) for e in embeds], lengths


def qwen2_audio_inputs(processor, clips, instructions):
    """``i -> Qwen2AudioProcessor's inputs`` for clip ``i`` and its instruction, through its chat template."""
    def inputs_of(i):
        chat = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                             {"type": "text", "text": instructions[i]}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=[clips[i].numpy()], sampling_rate=16000, return_tensors="pt")
        return {k: v for k, v in inputs.items() if k != "num_audio_tokens"}

    return inputs_of


# -- Qwen2-Audio ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,chat_template", [("legacy", False), ("v5", True)])
def test_qwen2_audio_release_imports_and_matches_transformers(tmp_path, layout, chat_template):
    folder, reference, processor = qwen2_audio_release(tmp_path / "release", layout, chat_template)
    names = weight_names(folder)
    assert ("language_model.model.norm.weight" in names) == (layout == "legacy")
    assert ("model.language_model.norm.weight" in names) == (layout == "v5")
    model = slmzoo.from_pretrained(folder)  # recognised and imported on the fly
    assert model.card.name == "qwen2-audio" and model.encoder.config.d_model == 32

    clips, instructions = _clips(), ["What does the speaker say?", "Describe it."]
    inputs_of = qwen2_audio_inputs(processor, clips, instructions)

    counts, generated = assert_matches_reference(model, reference, inputs_of, clips, instructions)
    assert counts == [25, 16]  # 25 embeddings per second
    assert max(generated) == NEW_TOKENS  # at least one row decodes the whole 32 tokens


def test_import_writes_a_standalone_model_that_loads_the_same(tmp_path):
    folder, _, _ = qwen2_audio_release(tmp_path / "release")
    result = runner.invoke(app, ["import", str(folder), "--out", str(tmp_path / "imported"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["importer"] == "qwen2-audio"
    saved = slmzoo.from_pretrained(tmp_path / "imported")
    assert saved.card.data["llm"]["tokenizer"] is None  # the release's tokenizer travels in the folder
    assert (tmp_path / "imported" / "tokenizer" / "tokenizer.json").is_file()
    fresh = import_checkpoint(folder)
    batch = fresh.prepare_batch(_clips(), prompts=["What does the speaker say?", "Describe it."])
    assert torch.equal(saved.prepare_batch(_clips(), prompts=["What does the speaker say?", "Describe it."])
                       ["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(saved(batch).logits, fresh(batch).logits, atol=0, rtol=0)
    assert saved.processor.stop_token_ids == fresh.processor.stop_token_ids == sorted(
        fresh.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))


# -- Voxtral -----------------------------------------------------------------------------------------------
def voxtral_requests(tmp_path, processor):
    """Three clips as 16-bit wavs (1 s, 0.62 s, 45 s), their instructions (the last the card's asr task,
    ``lang:en[TRANSCRIBE]``), and ``i -> VoxtralProcessor's inputs`` (mistral-common's chat and transcription
    requests)."""
    import soundfile as sf

    long_clip = torch.randn(45 * 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    paths = []
    # 16-bit wavs: mistral-common hands the processor its audio as 16-bit PCM (a float file would be quantised on
    # its side only), so both sides read the same samples.
    for i, clip in enumerate([*_clips(), long_clip]):
        paths.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(paths[-1], clip.numpy(), 16000, subtype="PCM_16")
    instructions = ["What does the speaker say?", "Describe it.", None]  # None: the card's asr task

    def inputs_of(i):
        if instructions[i] is None:  # lang:en[TRANSCRIBE]
            return dict(processor.apply_transcription_request(audio=paths[i], model_id="tiny", language="en"))
        chat = [{"role": "user", "content": [{"type": "audio", "path": paths[i]},
                                             {"type": "text", "text": instructions[i]}]}]
        return dict(processor.apply_chat_template(chat))

    return paths, instructions, inputs_of


def test_voxtral_release_imports_and_matches_transformers_and_mistral_common(tmp_path):
    """mistral-common tokenizes (chat and transcription requests), VoxtralProcessor makes the features; a 45 s
    clip spans two 30 s windows."""
    folder, reference, processor = voxtral_release(tmp_path / "release", layout="v5")
    model = import_checkpoint(folder)
    paths, instructions, inputs_of = voxtral_requests(tmp_path, processor)

    counts, generated = assert_matches_reference(model, reference, inputs_of, paths, instructions)
    assert counts == [375, 375, 750]  # 375 per 30 s window, encoded silence included
    assert max(generated) == NEW_TOKENS
    transcription = model.prepare_batch(paths[:1], prompts=None)["input_ids"][0].tolist()
    assert model.tokenizer.decode(transcription[4:]) == "[/INST]lang:en[TRANSCRIBE]"


# -- Granite Speech -----------------------------------------------------------------------------------------
def test_granite_speech_release_with_its_lora_imports_and_matches_transformers(tmp_path, monkeypatch):
    """The release's LoRA (peft's files) loads unmerged into the card's peft LoRA; the reference computes with it
    merged (what transformers does with the adapter on). Features: GraniteSpeechFeatureExtractor's, torchaudio's
    MelSpectrogram transcribed (tests/test_granite_encoder.py)."""
    import transformers as tf

    folder, reference, tokenizer = granite_speech_release(tmp_path / "release")
    model = import_checkpoint(folder)
    assert model.card.data["llm"]["lora"]["r"] == 4
    lora = [n for n in model.state_dict() if "lora_B" in n]
    assert len(lora) == 4 and all(model.state_dict()[n].abs().sum() > 0 for n in lora)  # loaded, not peft's zeros
    mels = {k: v for k, v in GRANITE_MELS.items() if k != "sample_rate"}
    processor = tf.GraniteSpeechProcessor(audio_processor=granite_feature_extractor(monkeypatch, **mels),
                                          tokenizer=tokenizer)
    clips, instructions = _clips(), ["can you transcribe the speech into a written format?", "Describe it."]

    def inputs_of(i):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "<|audio|>" + instructions[i]}],
                                             add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, audio=[clips[i]], return_tensors="pt")
        return {k: v for k, v in inputs.items() if k != "audio_embed_sizes"}

    # transformers 5's forward leaves out GraniteForCausalLM's division by logits_scaling; the card keeps it.
    counts, generated = assert_matches_reference(model, reference, inputs_of, clips, instructions,
                                                 logits_scale=reference.config.text_config.logits_scaling)
    assert counts == [12, 9]  # 3 per window of 15 frames, the last zero-padded
    assert max(generated) == NEW_TOKENS


def test_granite_speech_lora_is_active_only_with_audio(tmp_path, monkeypatch):
    """As released: transformers loads the adapter through peft and enables it only when given audio. In one batch
    with an audio row, a text-only row gets the base LLM's logits and greedy tokens (generate, and the step-wise
    decoding serve uses), the audio row the LoRA'd ones."""
    import transformers as tf
    import transformers.integrations.peft as hf_peft

    # transformers' adapter switches want peft >= 0.22 (0.21 here, the newest installable) but only check the
    # version: what they call, BaseTunerLayer.enable_adapters, is 0.21's own.
    monkeypatch.setattr(hf_peft, "check_peft_version", lambda min_version: None)
    folder, _, tokenizer = granite_speech_release(tmp_path / "release")
    reference = tf.GraniteSpeechForConditionalGeneration.from_pretrained(folder).eval()  # peft loads the adapter
    assert reference.peft_config
    model = import_checkpoint(folder)
    assert model.card.data["llm"]["lora"]["audio_only"] is True
    mels = {k: v for k, v in GRANITE_MELS.items() if k != "sample_rate"}
    processor = tf.GraniteSpeechProcessor(audio_processor=granite_feature_extractor(monkeypatch, **mels),
                                          tokenizer=tokenizer)
    clip, instructions = _clips()[0], ["Describe it.", "can you transcribe the speech into a written format?"]
    audio = [[], clip]  # row 0: text only
    batch = model.prepare_batch(audio, prompts=instructions)
    with torch.no_grad():
        logits = model(batch).logits
    ours_new = model.generate_ids(audio, prompts=instructions, max_new_tokens=NEW_TOKENS)
    stepwise = model.prefill(audio, prompts=instructions)
    scale = reference.config.text_config.logits_scaling

    text = tokenizer.apply_chat_template([{"role": "user", "content": instructions[0]}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist() == ids[0].tolist()
    with torch.no_grad():
        reference.disable_adapters()
        base = reference(input_ids=ids).logits[0] / scale
        reference.enable_adapters()
        lora = reference(input_ids=ids).logits[0] / scale
        theirs = reference.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:]
    assert not torch.allclose(base, lora, atol=1e-3)  # the LoRA matters on this prompt
    torch.testing.assert_close(logits[0, : len(base)], base, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stepwise.logits[0], base[-1], atol=1e-4, rtol=1e-4)
    assert ours_new[0].tolist()[: len(theirs)] == theirs.tolist()

    text = tokenizer.apply_chat_template([{"role": "user", "content": "<|audio|>" + instructions[1]}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = {k: v for k, v in processor(text=text, audio=[clip], return_tensors="pt").items()
              if k != "audio_embed_sizes"}
    with torch.no_grad():
        reference.enable_adapters()  # what its generate does given audio (the text-only generate turned them off)
        expected = reference(**inputs).logits[0] / scale
        theirs = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0]
    torch.testing.assert_close(logits[1, : len(expected)], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stepwise.logits[1], expected[-1], atol=1e-4, rtol=1e-4)
    theirs = theirs[inputs["input_ids"].shape[1]:].tolist()
    assert ours_new[1].tolist()[: len(theirs)] == theirs

    # serve's continuous batching: the rows prefilled apart, joined, decoded step by step, the text-only row left
    # out halfway: each keeps its own LoRA switch
    from slmzoo.decoding import DecodingBatch

    alone = [model.prefill(audio[i : i + 1], instructions[i : i + 1]) for i in range(2)]  # checked above
    rows = DecodingBatch.concat([model.prefill(audio[:1], instructions[:1]), model.prefill(audio[1:], instructions[1:])])
    assert rows.with_audio.tolist() == [False, True]
    for step in range(8):
        if step == 4:
            rows.select([1])
            alone = alone[1:]
            assert rows.with_audio.tolist() == [True]
        tokens = rows.logits.argmax(-1)
        for i, row in enumerate(alone):
            torch.testing.assert_close(rows.logits[i], row.logits[0], atol=1e-4, rtol=1e-4)
            row.step(model.llm, tokens[i : i + 1])
        rows.step(model.llm, tokens)


def test_an_audio_only_lora_trains_on_audio_rows_only_with_gradient_checkpointing_too():
    """Training: the LoRA's gradients come from the rows with audio (a text-only batch gives none), and are the same
    with gradient checkpointing, whose recomputation in backward runs after the forward has returned."""
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("granite-speech", preset="tiny"))
    for name, tensor in model.state_dict().items():
        if "lora_B" in name:
            tensor.normal_(0, 0.1)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}

    def gradients(audio, prompts):
        model.zero_grad()
        model(model.prepare_batch(audio, prompts, ["one two", "three"])).loss.backward()
        return {n: p.grad.clone() for n, p in lora.items()}

    clip = _clips()[0]
    mixed = gradients([[], clip], ["Say one two.", "Describe it."])
    assert all(g.abs().sum() > 0 for g in mixed.values())
    text_only = gradients([[], []], ["Say one two.", "Describe it."])
    assert all(g.abs().sum() == 0 for g in text_only.values())
    assert model.enable_gradient_checkpointing() == ["llm"]
    for name, gradient in gradients([[], clip], ["Say one two.", "Describe it."]).items():
        torch.testing.assert_close(gradient, mixed[name], atol=1e-6, rtol=1e-5)


# -- Audio Flamingo 3 -------------------------------------------------------------------------------------
def audio_flamingo_3_inputs(processor, clips, instructions, audio_first: bool = True):
    """``i -> AudioFlamingo3Processor's inputs`` for clip ``i`` and its instruction, through its chat template (the
    audio item before or after the text)."""
    def inputs_of(i):
        content = [{"type": "audio", "path": "clip.wav"}, {"type": "text", "text": instructions[i]}]
        chat = [{"role": "user", "content": content if audio_first else content[::-1]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=[clips[i].numpy()])
        return {k: v for k, v in inputs.items() if k != "num_audio_tokens"}

    return inputs_of


def test_audio_flamingo_3_release_imports_and_matches_transformers(tmp_path):
    """A 45 s clip: two 30 s windows, each with its own features, as AudioFlamingo3Processor cuts it."""
    folder, reference, processor = audio_flamingo_3_release(tmp_path / "release")
    model = import_checkpoint(folder)
    long_clip = torch.randn(45 * 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    long_clip[35 * 16000 : 36 * 16000] *= 4  # the loudest second in the second window: per-window clamps matter
    clips, instructions = [*_clips(), long_clip], ["Transcribe the input speech.", "Describe it.", "Describe it."]

    inputs_of = audio_flamingo_3_inputs(processor, clips, instructions)
    counts, generated = assert_matches_reference(model, reference, inputs_of, clips, instructions)
    assert counts == [25, 16, 1125]  # 25 per second, the windows' frames concatenated
    assert max(generated) == NEW_TOKENS


def test_audio_flamingo_3_cuts_audio_at_its_processors_max_audio_len(tmp_path, caplog):
    """AudioFlamingo3Processor truncates audio past ``max_audio_len`` (600 s by default, 60 s in this release's
    processor_config.json): a 70 s clip is encoded as its first two windows, with a warning, as the reference."""
    folder, reference, processor = audio_flamingo_3_release(tmp_path / "release", max_audio_len=60)
    model = import_checkpoint(folder)
    assert model.card.data["encoder"]["max_windows"] == 2
    assert slmzoo.load_card("audio-flamingo-3").data["encoder"]["max_windows"] == 20  # the processor's 600 s
    long_clip = torch.randn(70 * 16000, generator=torch.Generator().manual_seed(3)) * 0.1
    clips, instructions = [_clips()[1], long_clip], ["Describe it.", "Transcribe the input speech."]

    inputs_of = audio_flamingo_3_inputs(processor, clips, instructions)
    with caplog.at_level("WARNING", logger="slmzoo.encoders"):
        counts, _ = assert_matches_reference(model, reference, inputs_of, clips, instructions)
    assert counts == [16, 1500]  # 60 s of the 70 s clip, 25 per second
    assert "a clip of 70.0 s exceeds 60 s" in caplog.text


# -- canary-qwen (NeMo SALM): a synthetic checkpoint, no runnable reference offline ------------------------------
def test_canary_qwen_synthetic_checkpoint_imports_as_nemo_salm_computes_it(tmp_path):
    """NeMo's names and config layout (read from NeMo's code) load strictly into the salm card; the logits and greedy
    tokens equal SALM's computation rebuilt from the parts the checkpoint was made of: the stored filterbank's
    log-mel, ParakeetEncoder, perception.proj, the single audio locator tag replaced by the clip's embeddings, and
    the peft-wrapped Qwen3 with its LoRA unmerged. What NeMo itself computes is not checked here."""
    folder, parts = canary_qwen_release(tmp_path / "release", tmp_path / "qwen3")
    model = import_checkpoint(folder)
    assert model.card.name == "salm" and model.card.data["adapter"]["type"] == "linear"
    assert torch.equal(model.encoder.features.mel_filters, parts["fb"][0].float())  # bf16 as stored, not recomputed
    assert torch.equal(model.encoder.features.window, parts["window"].float())
    tokenizer = model.tokenizer
    assert model.audio_token_id == len(parts["tokenizer"])  # the locator tag, added after the LLM's vocabulary
    clips, instructions = _clips(), [None, "Describe it."]  # None: the card's "Transcribe the following:"
    batch = model.prepare_batch(clips, prompts=instructions)
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert tokenizer.decode(first) == ("<|im_start|>user\nTranscribe the following: <|audioplaceholder|><|im_end|>\n"
                                       "<|im_start|>assistant\n")  # NeMo's qwen prompt format
    with torch.no_grad():
        logits = model(batch).logits
        ours_new = model.generate_ids(clips, prompts=instructions, max_new_tokens=NEW_TOKENS)
        features, feature_lengths = model.encoder.features(batch["audio"], batch["audio_lens"])
        for i in range(len(clips)):  # SALM on each clip alone
            n = int(feature_lengths[i])
            mask = torch.ones(1, n, dtype=torch.long)
            hidden = parts["encoder"](features[i : i + 1, :n], attention_mask=mask).last_hidden_state[0]
            frames = int(parts["encoder"]._get_subsampling_output_length(feature_lengths[i : i + 1]))
            audio = parts["proj"](hidden[:frames])
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            tag = int((ids == model.audio_token_id).nonzero())
            text = parts["llm"].get_input_embeddings()(ids)
            embeds = torch.cat([text[:tag], audio, text[tag + 1:]])[None]
            expected = parts["llm"](inputs_embeds=embeds).logits[0]
            torch.testing.assert_close(logits[i, : len(expected)], expected, atol=1e-4, rtol=1e-4)
            theirs = parts["llm"].generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]),
                                           max_new_tokens=NEW_TOKENS, do_sample=False,
                                           eos_token_id=model.processor.stop_token_ids,
                                           pad_token_id=model.pad_token_id)[0].tolist()
            assert ours_new[i].tolist()[: len(theirs)] == theirs


# -- Ultravox: a synthetic release, no runnable reference offline (remote code) ----------------------------------
def test_ultravox_synthetic_release_takes_the_llm_from_its_text_model_id(tmp_path):
    """The release's tower and projector load strictly, the LLM comes from ``text_model_id``; the audio embeddings
    are Ultravox's projector formula (stack 8, RMSNorm, Linear, SwiGLU with the second half the gate, RMSNorm,
    Linear) over the tower's frames, ``ceil(mel frames / 16)`` of them, and they sit where the audio tag was."""
    folder, parts = ultravox_release(tmp_path / "release", tmp_path / "llama")
    model = import_checkpoint(folder)
    llm = parts["llm"]
    assert all(torch.equal(model.llm.base.state_dict()[k], v) for k, v in llm.state_dict().items()
               if k != "model.embed_tokens.weight" and k != "lm_head.weight")
    clips = _clips()
    batch = model.prepare_batch(clips, prompts=["Transcribe the audio.", "Describe it."])
    text = model.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTranscribe the audio.\n\n<|audio|>"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")  # the LLM's own template
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
        hidden = model.encoder(batch["audio"], batch["audio_lens"])
        p = parts["projector"]
        for i, clip in enumerate(clips):
            assert len(embeds[i]) == -(-(-(-len(clip) // 160)) // 16)  # Ultravox's ceil(mel frames / (2 * 8))
            frames = hidden.hidden[i, : int(hidden.lengths[i])]
            frames = torch.nn.functional.pad(frames, (0, 0, 0, -len(frames) % 8)).reshape(-1, 8 * 32)
            x = torch.nn.functional.rms_norm(frames, (256,), p["ln_pre.weight"], eps=1e-6) @ p["linear_1.weight"].T
            x, gate = x.chunk(2, dim=-1)
            x = torch.nn.functional.rms_norm(x * torch.nn.functional.silu(gate), (32,), p["ln_mid.weight"], eps=1e-6)
            torch.testing.assert_close(embeds[i], x @ p["linear_2.weight"].T, atol=1e-5, rtol=1e-5)
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            tag = int((ids == model.audio_token_id).nonzero())
            rows = llm.get_input_embeddings()(ids.clamp(max=llm.config.vocab_size - 1))
            fused = torch.cat([rows[:tag], embeds[i], rows[tag + 1:]])[None]
            expected = llm(inputs_embeds=fused).logits[0]
            torch.testing.assert_close(logits[i, : len(expected)], expected, atol=1e-4, rtol=1e-4)


def test_ultravox_features_are_its_processors_for_a_prompts_clip(tmp_path):
    """UltravoxProcessor's WhisperFeatureExtractor call (padding="longest", pad_to_multiple_of=160, over one prompt's
    clips): a prompt's only clip gets the same features and mel-frame count here, whatever it is batched with. Two
    clips in one prompt are padded to the longer by Ultravox: the shorter one's last frame, whose STFT window reaches
    past its hops, sees zeros instead of its reflection (documented in the card); the others are equal."""
    import transformers as tf

    folder, _ = ultravox_release(tmp_path / "release", tmp_path / "llama")
    model = import_checkpoint(folder)
    assert model.card.data["encoder"]["pad_to_hop"] is True
    extractor = tf.WhisperFeatureExtractor(feature_size=128)
    # 16000 and 10070 samples, 100 and 63 frames: the short clip ends 10 samples before its last hop, so its last
    # frame's window reaches 40 samples past the hop, into its reflection (alone) or into zeros (padded with another).
    clips = [_clips()[0], torch.randn(10070, generator=torch.Generator().manual_seed(4)) * 0.1]

    def ultravox(audios):  # what UltravoxProcessor hands the model for one prompt's clips
        x = extractor([a.numpy() for a in audios], sampling_rate=16000, padding="longest", pad_to_multiple_of=160,
                      truncation=False, return_attention_mask=True, return_tensors="pt")
        return x.input_features, x.attention_mask.sum(-1)

    batch = model.prepare_batch(clips, prompts=["Describe it.", "Describe it."])
    features, lengths = model.encoder.features(batch["audio"], batch["audio_lens"])
    for i, clip in enumerate(clips):
        theirs, count = ultravox([clip])
        assert int(lengths[i]) == int(count[0]) == -(-len(clip) // 160)
        torch.testing.assert_close(features[i, :, : int(count[0])], theirs[0], atol=1e-5, rtol=1e-5)
    together, counts = ultravox(clips)  # one prompt with both clips
    assert counts.tolist() == lengths.tolist()
    short = int(counts[1])
    torch.testing.assert_close(features[1, :, : short - 1], together[1, :, : short - 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(features[1, :, short - 1], together[1, :, short - 1], atol=1e-3)


def ultravox_audio(parts, clip: torch.Tensor) -> torch.Tensor:
    """A prompt's only clip as fixie-ai/ultravox turns it into audio embeddings ``[N, D]``, rebuilt from the
    release's parts: UltravoxProcessor's features and 3000-frame chunks (a continuation zero-padded to 3000),
    ModifiedWhisperEncoder on the chunks (positions from 0, padded keys masked by each chunk's length),
    UltravoxProjector over each chunk's whole output (zeros only past it) and ``ceil(chunk frames / 16)``
    embeddings of each chunk, one after the other."""
    import transformers as tf

    x = tf.WhisperFeatureExtractor(feature_size=128)([clip.numpy()], sampling_rate=16000, padding="longest",
                                                     pad_to_multiple_of=160, truncation=False,
                                                     return_attention_mask=True, return_tensors="pt")
    features, frames = x.input_features[0], int(x.attention_mask.sum())
    chunks = [features[:, offset : offset + 3000] for offset in range(0, frames, 3000)]
    if len(chunks) > 1:
        chunks[-1] = torch.nn.functional.pad(chunks[-1], (0, 3000 - chunks[-1].shape[-1]))
    chunk_frames = torch.tensor([min(frames - offset, 3000) for offset in range(0, frames, 3000)])
    tower, p = parts["tower"], parts["projector"]
    h = torch.nn.functional.gelu(tower.conv1(torch.stack(chunks)))
    h = torch.nn.functional.gelu(tower.conv2(h)).permute(0, 2, 1)
    h = h + tower.embed_positions.weight[: h.shape[1]]
    keys = torch.arange(h.shape[1])[None] < ((chunk_frames - 1) // 2 + 1)[:, None]
    bias = torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(h.dtype).min)[:, None, None, :]
    for layer in tower.layers:
        h = layer(h, bias)
    h = tower.layer_norm(h)
    h = torch.nn.functional.pad(h, (0, 0, 0, -h.shape[1] % 8)).reshape(len(chunks), -1, 8 * 32)
    h = torch.nn.functional.rms_norm(h, (256,), p["ln_pre.weight"], eps=1e-6) @ p["linear_1.weight"].T
    h, gate = h.chunk(2, dim=-1)
    h = torch.nn.functional.rms_norm(h * torch.nn.functional.silu(gate), (32,), p["ln_mid.weight"], eps=1e-6)
    embeds = h @ p["linear_2.weight"].T
    return torch.cat([e[:count] for e, count in zip(embeds, -(-chunk_frames // 16))])


def test_ultravox_long_clip_is_chunked_and_stacked_per_chunk_as_ultravox(tmp_path):
    """A 45 s clip batched with a 1 s one: the long clip's log-mel in 3000-frame chunks, each encoded alone and
    stacked by 8 on its own, 188 + 94 embeddings (4501 mel frames: the last chunk's 1501 frames make the conv stem
    see its zero padding and its last group hold a padded position's output), logits and 32 greedy tokens as
    Ultravox's computation rebuilt from the release's parts."""
    folder, parts = ultravox_release(tmp_path / "release", tmp_path / "llama")
    model = import_checkpoint(folder)
    assert model.card.data["encoder"]["long_clips"] == "split" and model.card.data["encoder"]["window_multiple"] == 8
    long_clip = torch.randn(45 * 16000 + 100, generator=torch.Generator().manual_seed(5)) * 0.1
    long_clip[35 * 16000 : 36 * 16000] *= 4  # the loudest second past 30 s: one clamp over the whole clip
    clips, instructions = [long_clip, _clips()[0]], ["Transcribe the audio.", "Describe it."]
    batch = model.prepare_batch(clips, prompts=instructions)
    llm = parts["llm"]
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
        ours_new = model.generate_ids(clips, prompts=instructions, max_new_tokens=NEW_TOKENS)
        assert [len(e) for e in embeds] == [188 + 94, 7]  # ceil(3000 / 16) + ceil(1501 / 16); ceil(100 / 16)
        for i, clip in enumerate(clips):
            audio = ultravox_audio(parts, clip)
            torch.testing.assert_close(embeds[i], audio, atol=1e-5, rtol=1e-5)
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            tag = int((ids == model.audio_token_id).nonzero())
            rows = llm.get_input_embeddings()(ids.clamp(max=llm.config.vocab_size - 1))
            fused = torch.cat([rows[:tag], audio, rows[tag + 1:]])[None]
            torch.testing.assert_close(logits[i, : fused.shape[1]], llm(inputs_embeds=fused).logits[0],
                                       atol=1e-4, rtol=1e-4)
            theirs = llm.generate(inputs_embeds=fused, attention_mask=torch.ones(fused.shape[:2]),
                                  max_new_tokens=NEW_TOKENS, do_sample=False,
                                  eos_token_id=model.processor.stop_token_ids, pad_token_id=model.pad_token_id)
            assert ours_new[i].tolist()[: theirs.shape[1]] == theirs[0].tolist()


# -- backbones named by Hub id (NeMo's pretrained_llm, Ultravox's text_model_id) -----------------------------------
def _hub_id_instead(hub, folder, key: str, llm_folder, repo_id: str) -> None:
    """``llm_folder`` uploaded to the test Hub as ``repo_id`` and deleted here; the release's ``config.json`` names
    ``repo_id`` under ``key``, as the released files do."""
    import shutil

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id)
    api.upload_folder(folder_path=llm_folder, repo_id=repo_id, commit_message="the LLM")
    shutil.rmtree(llm_folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: repo_id}))


def test_pretrained_llm_and_text_model_id_given_as_hub_ids_are_fetched(hub, tmp_path):
    """canary-qwen's ``pretrained_llm`` (config and tokenizer only) and Ultravox's ``text_model_id`` (weights too)
    resolve through the huggingface_hub cache: the imports equal those from local folders."""
    clips, prompts = _clips(), ["Describe it.", None]
    for make, key, repo_id in ((canary_qwen_release, "pretrained_llm", "org/tiny-qwen3"),
                               (ultravox_release, "text_model_id", "org/tiny-llama")):
        name = make.__name__
        local = import_checkpoint(make(tmp_path / name / "local", tmp_path / name / "llm")[0])
        folder, _ = make(tmp_path / name / "release", tmp_path / name / "llm2")
        _hub_id_instead(hub, folder, key, tmp_path / name / "llm2", repo_id)
        fetched = import_checkpoint(folder)
        batch = local.prepare_batch(clips, prompts=prompts)
        assert torch.equal(fetched.prepare_batch(clips, prompts=prompts)["input_ids"], batch["input_ids"])
        with torch.no_grad():
            torch.testing.assert_close(fetched(batch).logits, local(batch).logits, atol=0, rtol=0)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text_model_id": "org/missing"}))
    with pytest.raises(ReleaseError, match="text_model_id 'org/missing': org/missing: no such repository"):
        import_checkpoint(folder)


# -- the way back out ---------------------------------------------------------------------------------------
def test_export_to_transformers_loads_in_its_class_and_decodes_the_same(tmp_path):
    """A Qwen2-Audio card trained with slmzoo (random here, the built-in byte tokenizer) exported: transformers'
    class and processor load the folder unchanged and give our prompts, logits and greedy tokens."""
    import transformers as tf

    torch.manual_seed(3)
    slmzoo.build(slmzoo.load_card("qwen2-audio", preset="tiny")).save_pretrained(tmp_path / "ours")
    ours = slmzoo.from_pretrained(tmp_path / "ours")
    result = runner.invoke(app, ["export", str(tmp_path / "ours"), "--to", "transformers", "--out",
                                 str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "language_model.model.norm.weight" in load_file(tmp_path / "hf" / "model.safetensors")  # the Hub's names
    reference = tf.Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = tf.Qwen2AudioProcessor.from_pretrained(tmp_path / "hf")
    clips, instructions = _clips(), ["What does the speaker say?", "Describe it."]
    inputs_of = qwen2_audio_inputs(processor, clips, instructions)

    assert_matches_reference(ours, reference, inputs_of, clips, instructions)
    result = runner.invoke(app, ["export", "salm", "--preset", "tiny", "--to", "transformers", "--out",
                                 str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no importer exports this card" in result.output
    result = runner.invoke(app, ["export", "qwen2-audio", "--preset", "tiny", "--set", "encoder.pool=1", "--to",
                                 "transformers", "--out", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "encoder.pool is 1 (the reference computes 2)" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "ours"), "--to", "nemo", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown format" in result.output


def _exported(tmp_path, card: str, *overrides: str, trained=None):
    """The card's tiny preset (random, saved and loaded again, as a trained model is; ``trained(model)`` changes it
    first) and its export to transformers through the CLI: ``(model, export folder)``."""
    torch.manual_seed(3)
    model = slmzoo.build(slmzoo.load_card(card, preset="tiny", overrides=list(overrides)))
    if trained is not None:
        trained(model)
    model.save_pretrained(tmp_path / "ours")
    ours = slmzoo.from_pretrained(tmp_path / "ours")
    result = runner.invoke(app, ["export", str(tmp_path / "ours"), "--to", "transformers", "--out",
                                 str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    return ours, tmp_path / "hf"


def test_audio_flamingo_3_export_loads_in_its_class_and_processor(tmp_path):
    """The export's chat template renders content lists (audio, text) as the card renders its prompts; a 45 s clip
    in two windows; the card's 10 minute cap becomes the processor's max_audio_len."""
    import transformers as tf

    ours, hf = _exported(tmp_path, "audio-flamingo-3")
    assert "language_model.model.norm.weight" in weight_names_of(hf)  # the Hub's names
    reference = tf.AudioFlamingo3ForConditionalGeneration.from_pretrained(hf).eval()
    processor = tf.AudioFlamingo3Processor.from_pretrained(hf)
    assert processor.max_audio_len == 600
    long_clip = torch.randn(45 * 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    clips, instructions = [*_clips(), long_clip], ["Transcribe the input speech.", "Describe it.", "Describe it."]

    inputs_of = audio_flamingo_3_inputs(processor, clips, instructions, audio_first=False)
    counts, generated = assert_matches_reference(ours, reference, inputs_of, clips, instructions)
    assert counts == [25, 16, 1125]
    result = runner.invoke(app, ["export", "audio-flamingo-3", "--preset", "tiny", "--set", "encoder.max_windows=null",
                                 "--to", "transformers", "--out", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "set encoder.max_windows" in result.output


def test_granite_speech_export_loads_with_its_lora_active_only_with_audio(tmp_path, monkeypatch):
    """The audio-only LoRA goes out as the release ships it (peft's adapter files beside the base weights, which
    transformers loads and enables only with audio); the tokenizer's chat template renders the card's prompts."""
    import transformers as tf
    import transformers.integrations.peft as hf_peft

    monkeypatch.setattr(hf_peft, "check_peft_version", lambda min_version: None)  # as in the import test above

    def trained(model):  # peft starts lora_B at zero: a LoRA that changes nothing would prove nothing
        for name, tensor in model.state_dict().items():
            if "lora_B" in name:
                tensor.normal_(0, 0.1)

    ours, hf = _exported(tmp_path, "granite-speech", trained=trained)
    assert (hf / "adapter_config.json").is_file() and "language_model.model.norm.weight" in weight_names_of(hf)
    granite_feature_extractor(monkeypatch)  # torchaudio's MelSpectrogram transcribed, for from_pretrained below
    reference = tf.GraniteSpeechForConditionalGeneration.from_pretrained(hf).eval()
    processor = tf.GraniteSpeechProcessor.from_pretrained(hf)
    tokenizer = processor.tokenizer
    clips, instructions = _clips(), ["can you transcribe the speech into a written format?", "Describe it."]

    def inputs_of(i):
        reference.enable_adapters()  # a text-only generate below turns them off; generate with audio turns them on
        text = tokenizer.apply_chat_template([{"role": "user", "content": "<|audio|>" + instructions[i]}],
                                             add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, audio=[clips[i]], return_tensors="pt")
        return {k: v for k, v in inputs.items() if k != "audio_embed_sizes"}

    scale = reference.config.text_config.logits_scaling
    assert_matches_reference(ours, reference, inputs_of, clips, instructions, logits_scale=scale)
    ids = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "Describe it."}], tokenize=False,
                                                  add_generation_prompt=True), return_tensors="pt").input_ids
    theirs = reference.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:]
    with torch.no_grad():
        base = reference(input_ids=ids).logits[0] / scale  # generate left the adapters off: text only
        batch = ours.prepare_batch([[]], prompts=["Describe it."])
        torch.testing.assert_close(ours(batch).logits[0], base, atol=1e-4, rtol=1e-4)
    assert batch["input_ids"][0].tolist() == ids[0].tolist()
    assert ours.generate_ids([[]], prompts=["Describe it."], max_new_tokens=NEW_TOKENS)[0].tolist()[
        : len(theirs)] == theirs.tolist()


def test_voxtral_export_loads_in_its_class_with_a_tekken_json_for_mistral_common(tmp_path):
    """An imported Voxtral, saved as slmzoo saves a fine-tune, exported: VoxtralProcessor over mistral-common reads
    the tekken.json written from the model's tokenizer, and gives the same prompts (chat and transcription),
    logits and greedy tokens. The tiny card's byte tokenizer and llama2 prompt are refused: mistral-common cannot
    tokenize as they do."""
    import transformers as tf

    folder, _, _ = voxtral_release(tmp_path / "release")
    import_checkpoint(folder).save_pretrained(tmp_path / "ours")
    ours = slmzoo.from_pretrained(tmp_path / "ours")
    result = runner.invoke(app, ["export", str(tmp_path / "ours"), "--to", "transformers", "--out",
                                 str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    hf = tmp_path / "hf"
    assert (hf / "tekken.json").is_file() and not (hf / "tokenizer.json").exists()
    assert "language_model.model.norm.weight" in weight_names_of(hf)
    assert json.loads((hf / "tekken.json").read_text())["vocab"] == json.loads(
        (folder / "tekken.json").read_text())["vocab"]  # the release's BPE ranks, as it shipped them
    reference = tf.VoxtralForConditionalGeneration.from_pretrained(hf).eval()
    processor = tf.VoxtralProcessor.from_pretrained(hf)
    paths, instructions, inputs_of = voxtral_requests(tmp_path, processor)
    counts, generated = assert_matches_reference(ours, reference, inputs_of, paths, instructions)
    assert counts == [375, 375, 750] and max(generated) == NEW_TOKENS
    result = runner.invoke(app, ["export", "voxtral", "--preset", "tiny", "--to", "transformers", "--out",
                                 str(tmp_path / "nope")])
    assert result.exit_code == 2 and "mistral-common" in result.output


# -- a third party's importer ---------------------------------------------------------------------------------
class ThirdPartyImporter:
    """A plugin's importer of the Qwen2-Audio layout under another architecture name (a fine-tune's own class)."""

    @staticmethod
    @slmzoo.hookimpl
    def slmzoo_register_importers(register):
        register(ImporterSpec(name="my-audio-llm", card="qwen2-audio", description="a test importer",
                              factory="slmzoo_plugins.importers.qwen2_audio:Qwen2AudioImporter",
                              architectures=("MyAudioLLMForConditionalGeneration",)))


def test_a_plugin_registers_an_importer_through_the_hook(tmp_path):
    import slmzoo.plugins

    folder, _, _ = qwen2_audio_release(tmp_path / "release")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["MyAudioLLMForConditionalGeneration"],
                                                    "model_type": "my_audio_llm"}))
    with pytest.raises(ReleaseError, match="MyAudioLLMForConditionalGeneration"):
        find_importer(folder)
    info = slmzoo.plugins.register_plugin(ThirdPartyImporter, "third_party_importer")
    try:
        assert info.status == "ok" and info.components == ["importer:my-audio-llm"]
        assert find_importer(folder).provider == "third_party_importer"
    finally:
        slmzoo.plugins.host().unregister("third_party_importer")
    assert "my-audio-llm" not in slmzoo.plugins.registry().importers


# -- errors name what did not match ----------------------------------------------------------------------
def test_an_unrecognised_release_is_an_error_naming_its_config(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"],
                                                    "model_type": "whisper"}))
    with pytest.raises(ReleaseError, match="WhisperForConditionalGeneration.*'whisper'.*qwen2-audio"):
        find_importer(folder)
    result = runner.invoke(app, ["import", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no importer recognises" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["generate", str(empty), "--audio", str(folder / "config.json")])
    assert result.exit_code == 2 and "neither a saved slmzoo model" in result.output
    with pytest.raises(ReleaseError, match="--card voxtral-nope: no importer"):
        find_importer(folder, card="voxtral-nope")


def _edit_shards(folder, edit) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = edit(load_file(folder / shard))
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        for name in set(index["weight_map"]) - set(tensors):
            if index["weight_map"][name] == shard:
                del index["weight_map"][name]
        index["weight_map"].update({name: shard for name in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_weights_that_do_not_fit_are_named(tmp_path):
    folder, _, _ = qwen2_audio_release(tmp_path / "release")

    def edit(tensors):
        tensors.pop("audio_tower.layer_norm.bias", None)
        if "multi_modal_projector.linear.weight" in tensors:
            narrow = tensors["multi_modal_projector.linear.weight"][:, :8]
            tensors["multi_modal_projector.linear.weight"] = narrow.contiguous()
            tensors["multi_modal_projector.extra.weight"] = torch.zeros(2)
        return tensors

    _edit_shards(folder, edit)
    with pytest.raises(ReleaseError) as error:
        import_checkpoint(folder)
    message = str(error.value)
    assert "no rule of the importer maps: multi_modal_projector.extra.weight" in message
    assert "lacks: model.audio_tower.layer_norm.bias (for encoder.encoder.layer_norm.bias)" in message
    assert "multi_modal_projector.linear.weight has shape (64, 8), the card's model expects (64, 32)" in message


def test_a_release_with_other_feature_settings_is_refused(tmp_path):
    folder, _, _ = qwen2_audio_release(tmp_path / "release")
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "hop_length": 320}))
    with pytest.raises(ReleaseError, match="hop_length 320 .the whisper encoder computes 160"):
        import_checkpoint(folder)
