"""Cards against the whole audio LLMs in transformers: the same weights must give the same logits.

Each test builds a card's tiny preset, copies its weights into transformers' implementation of the published
model (built at the same tiny size), and compares next-token logits over the whole fused sequence, clip for clip.
Our side runs the clips as one padded batch; the reference runs each alone, so padding handling is checked too.

Granite's reference features come from transformers' GraniteSpeechFeatureExtractor itself, with torchaudio (not
installed) replaced by a transcription of its MelSpectrogram (tests/test_granite_encoder.py). The granite card's
modality-specific LoRA is plain peft LoRA here, so its yardstick builds the tiny preset without it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
import transformers as tf

import slmzoo
from slmzoo_plugins.importers.audio_flamingo_3 import AudioFlamingo3Importer
from slmzoo_plugins.importers.granite_speech import GraniteSpeechImporter
from slmzoo_plugins.importers.qwen2_audio import Qwen2AudioImporter
from slmzoo_plugins.importers.transformers_audio import audio_encoder_fields, whisper_tower_fields
from slmzoo_plugins.importers.voxtral import VoxtralImporter
from tests.test_granite_encoder import granite_feature_extractor

pytestmark = pytest.mark.usefixtures("one_thread")


def _expand_audio_tags(ids: torch.Tensor, tag: int, counts: list[int]) -> torch.Tensor:
    """One audio tag per clip -> ``counts[i]`` copies of it, as the reference processors lay prompts out."""
    out, clip = [], 0
    for token in ids.tolist():
        if token == tag:
            out += [tag] * counts[clip]
            clip += 1
        else:
            out.append(token)
    return torch.tensor([out])


def _renamed(state: dict[str, torch.Tensor], importer) -> dict[str, torch.Tensor]:
    """Our tensors under the reference's names, by the rules of the card's importer (plugins/importers/): the
    yardstick tests the importer's name mapping too. Tensors no rule names are dropped."""
    renamed = {name: importer.release_name(name) for name in state}
    return {theirs: state[name] for name, theirs in renamed.items() if theirs is not None}


def _clips() -> list[torch.Tensor]:
    # 1 s and 0.62 s: 9970 samples is where a floor of samples / hop would lose a mel frame the mask counts.
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16000, generator=generator) * 0.1, torch.randn(9970, generator=generator) * 0.1]


def _assert_same_logits(model, reference_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        clips: list[torch.Tensor], prompts: list[str]) -> list[int]:
    """Our logits for the padded batch equal ``reference_logits(input_ids [1, L], clip [S]) -> [L, V]`` per clip;
    returns the number of audio embeddings of each clip."""
    batch = model.prepare_batch(clips, prompts=prompts)
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
    counts = [len(e) for e in embeds]
    for i, clip in enumerate(clips):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        ids = _expand_audio_tags(ids, model.llm.audio_token_id, counts[i:i + 1])
        with torch.no_grad():
            expected = reference_logits(ids, clip)
        torch.testing.assert_close(logits[i, : len(expected)], expected, atol=2e-4, rtol=1e-4)
    return counts


def _whisper_features(model, clip: torch.Tensor):
    extractor = tf.WhisperFeatureExtractor(feature_size=model.encoder.config.num_mel_bins)
    return extractor(clip.numpy(), sampling_rate=16000, return_attention_mask=True, padding="max_length",
                     return_tensors="pt")


def test_qwen2_audio_card_matches_transformers_qwen2_audio():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("qwen2-audio", preset="tiny")).eval()
    reference = tf.Qwen2AudioForConditionalGeneration(tf.Qwen2AudioConfig(
        audio_config=whisper_tower_fields(model.encoder.config), text_config=model.llm.config.to_dict(),
        audio_token_id=model.llm.audio_token_id)).eval()
    reference.load_state_dict(_renamed(model.state_dict(), Qwen2AudioImporter), strict=True)

    def reference_logits(ids, clip):
        features = _whisper_features(model, clip)
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features.input_features,
                         feature_attention_mask=features.attention_mask).logits[0]

    counts = _assert_same_logits(model, reference_logits, _clips(), ["What does the speaker say?", "Describe it."])
    assert counts == [25, 16]  # 25 embeddings per second


def test_audio_flamingo_3_card_matches_transformers_audioflamingo3():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("audio-flamingo-3", preset="tiny")).eval()
    audio_config = audio_encoder_fields(model.encoder.config)
    reference = tf.AudioFlamingo3ForConditionalGeneration(tf.AudioFlamingo3Config(
        audio_config=audio_config, text_config=model.llm.config.to_dict(),
        audio_token_id=model.llm.audio_token_id)).eval()
    reference.load_state_dict(_renamed(model.state_dict(), AudioFlamingo3Importer), strict=True)

    def reference_logits(ids, clip):
        features = _whisper_features(model, clip)
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features.input_features,
                         input_features_mask=features.attention_mask).logits[0]

    counts = _assert_same_logits(model, reference_logits, _clips(), ["Transcribe the input speech.", "Describe."])
    assert counts == [25, 16]


# -- Voxtral: every frame of every 30 s window, clips longer than 30 s split ------------------------------------
WINDOW = 480000  # 30 s at 16 kHz


def _voxtral_features(model, clip: torch.Tensor) -> torch.Tensor:
    """``clip [S]`` -> ``[ceil(S / 30 s), n_mels, 3000]``: VoxtralProcessor's own code with its default audio
    settings (pad to a multiple of 30 s, log-mel over all of it, cut into 3000-frame chunks)."""
    settings = dict(tf.VoxtralProcessor.audio_kwargs)
    chunk = settings.pop("max_source_positions")
    extractor = tf.WhisperFeatureExtractor(feature_size=model.encoder.config.num_mel_bins)
    # _retrieve_input_features reads only self.feature_extractor; a whole processor needs mistral_common's tokenizer.
    return tf.VoxtralProcessor._retrieve_input_features(SimpleNamespace(feature_extractor=extractor), [clip.numpy()],
                                                        chunk, **settings)


def test_voxtral_card_matches_transformers_voxtral():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("voxtral", preset="tiny")).eval()
    tower = whisper_tower_fields(model.encoder.config)
    # VoxtralEncoderConfig's intermediate_size is both the FFN width and the projector input (four stacked frames).
    assert tower["encoder_ffn_dim"] == 4 * tower["d_model"]
    audio_config = audio_encoder_fields(model.encoder.config)
    reference = tf.VoxtralForConditionalGeneration(tf.VoxtralConfig(
        audio_config=audio_config, text_config=model.llm.config.to_dict(),
        audio_token_id=model.llm.audio_token_id, projector_hidden_act="gelu")).eval()
    reference.load_state_dict(_renamed(model.state_dict(), VoxtralImporter), strict=True)

    def reference_logits(ids, clip):
        features = _voxtral_features(model, clip)
        assert features.shape == (math.ceil(len(clip) / WINDOW), tower["num_mel_bins"], 3000)
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features).logits[0]

    generator = torch.Generator().manual_seed(2)
    long_clip = torch.randn(45 * 16000, generator=generator) * 0.1
    long_clip[20 * 16000 : 21 * 16000] *= 4  # the loudest second sits in the first window: one clamp for all
    clips = _clips() + [long_clip]
    counts = _assert_same_logits(model, reference_logits, clips,
                                 ["What does the speaker say?", "Describe it.", "lang:en[TRANSCRIBE]"])
    # mistral_common's count: the clip padded to a multiple of 30 s, one [AUDIO] token per 8 mel frames.
    assert counts == [math.ceil(len(clip) / WINDOW) * 3000 // 8 for clip in clips] == [375, 375, 750]


# -- Granite Speech: its own CTC encoder and a window Q-Former -------------------------------------------------
def test_granite_speech_card_matches_transformers_granite_speech(monkeypatch):
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("granite-speech", preset="tiny", overrides=["llm.lora=null"])).eval()
    adapter = model.adapter
    reference = tf.GraniteSpeechForConditionalGeneration(tf.GraniteSpeechConfig(
        encoder_config=model.encoder.model.config.to_dict(), projector_config=adapter.qformer.config.to_dict(),
        text_config=model.llm.config.to_dict(), audio_token_index=model.llm.audio_token_id,
        window_size=adapter.window, downsample_rate=adapter.window // adapter.num_queries,
        has_lora_adapter=False)).eval()
    for name, buffer in model.encoder.named_buffers():  # BatchNorm running statistics other than the init's 0 / 1
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
    reference.load_state_dict(_renamed(model.state_dict(), GraniteSpeechImporter), strict=True)
    extractor = granite_feature_extractor(monkeypatch, **model.encoder.feature_settings)

    clips = _clips()  # 1 s and 0.62 s: 50 and 31 encoder frames, both ending in partial blocks and windows
    batch = model.prepare_batch(clips, prompts=["What does the speaker say?", "Describe it."])
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
    assert [len(e) for e in embeds] == [12, 9]  # 10 per second: 3 per window of 15 frames, the last zero-padded
    for i, clip in enumerate(clips):
        features = extractor([clip])
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        ids = _expand_audio_tags(ids, model.llm.audio_token_id, features["audio_embed_sizes"])  # the processor's
        with torch.no_grad():
            audio = reference.get_audio_features(features.input_features).pooler_output[0]
            hidden = reference.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     input_features=features.input_features,
                                     input_features_mask=features.input_features_mask).last_hidden_state
            # GraniteForCausalLM divides the logits by logits_scaling (16 for granite-3.3-8b-instruct), and so did
            # IBM's original and transformers 4.x's GraniteSpeechForConditionalGeneration (its language_model was
            # that class). transformers 5.x's forward applies lm_head without the division: a constant factor that
            # leaves greedy decoding unchanged but not probabilities or the loss. The card keeps the division.
            expected = reference.lm_head(hidden)[0] / model.llm.config.logits_scaling
        torch.testing.assert_close(embeds[i], audio, atol=1e-5, rtol=1e-5)
        # Tight: the tiny model's logits are ~0.1 (divided by 16); masking the last window instead of zero-padding
        # it moves them by 3e-4.
        torch.testing.assert_close(logits[i, : len(expected)], expected, atol=1e-5, rtol=1e-5)


# -- the trained audio towers of these models load into the whisper encoder as they are ------------------------------
@pytest.mark.parametrize("name", ["qwen2-audio", "audio-flamingo-3", "voxtral"])
def test_an_audio_llm_checkpoint_gives_its_audio_tower_to_the_whisper_encoder(tmp_path, name):
    """``encoder.pretrained`` may name a whole audio LLM checkpoint: its tower's config and weights are read
    (strictly), the LLM's never leave the disk. (The yardsticks above show the tower computes as the reference.)"""
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card(name, preset="tiny")).eval()
    tower = model.encoder.config
    classes = {"qwen2-audio": (tf.Qwen2AudioForConditionalGeneration, tf.Qwen2AudioConfig, whisper_tower_fields(tower)),
               "audio-flamingo-3": (tf.AudioFlamingo3ForConditionalGeneration, tf.AudioFlamingo3Config,
                                    audio_encoder_fields(tower)),
               "voxtral": (tf.VoxtralForConditionalGeneration, tf.VoxtralConfig, audio_encoder_fields(tower))}
    model_class, config_class, audio_config = classes[name]
    reference = model_class(config_class(audio_config=audio_config, text_config=model.llm.config.to_dict(),
                                         audio_token_id=model.llm.audio_token_id)).eval()
    reference.save_pretrained(tmp_path / name)
    loaded = slmzoo.build(slmzoo.load_card(name, preset="tiny", overrides=[
        f"encoder.pretrained={tmp_path / name}", "encoder.config=null"])).eval()
    tower = reference.model.audio_tower.state_dict()
    ours = loaded.encoder.encoder.state_dict()
    assert ours.keys() == tower.keys() and all(torch.equal(ours[k], tower[k]) for k in tower)
    assert loaded.encoder.config.d_model == model.encoder.config.d_model
