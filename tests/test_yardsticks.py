"""Cards against the whole audio LLMs in transformers: the same weights must give the same logits.

Each test builds a card's tiny preset, copies its weights into transformers' implementation of the published
model (built at the same tiny size), and compares next-token logits over the whole fused sequence, clip for clip.
Our side runs the clips as one padded batch; the reference runs each alone, so padding handling is checked too.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import transformers as tf

import slmzoo

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


def _renamed(state: dict[str, torch.Tensor], prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our tensors under the reference's names: ``{our prefix: their prefix}``; unmatched tensors are dropped."""
    return {theirs + name[len(ours):]: tensor for name, tensor in state.items()
            for ours, theirs in prefixes.items() if name.startswith(ours)}


def _whisper_tower(model) -> dict:
    """The whisper encoder's dimensions, as the Qwen2-Audio / Audio Flamingo 3 audio tower configs name them."""
    config = model.encoder.config
    return {k: getattr(config, k) for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                                            "num_mel_bins", "max_source_positions")}


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
        audio_config=_whisper_tower(model), text_config=model.llm.config.to_dict(),
        audio_token_id=model.llm.audio_token_id)).eval()
    reference.load_state_dict(_renamed(model.state_dict(), {
        "encoder.encoder.": "model.audio_tower.", "adapter.proj.": "model.multi_modal_projector.linear.",
        "llm.model.model.": "model.language_model.", "llm.model.lm_head.": "lm_head."}), strict=True)

    def reference_logits(ids, clip):
        features = _whisper_features(model, clip)
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features.input_features,
                         feature_attention_mask=features.attention_mask).logits[0]

    counts = _assert_same_logits(model, reference_logits, _clips(), ["What does the speaker say?", "Describe it."])
    assert counts == [25, 16]  # 25 embeddings per second


def test_audio_flamingo_3_card_matches_transformers_audioflamingo3():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("audio-flamingo-3", preset="tiny")).eval()
    tower = _whisper_tower(model)
    audio_config = {"hidden_size": tower["d_model"], "num_hidden_layers": tower["encoder_layers"],
                    "num_attention_heads": tower["encoder_attention_heads"],
                    "intermediate_size": tower["encoder_ffn_dim"], "num_mel_bins": tower["num_mel_bins"],
                    "max_source_positions": tower["max_source_positions"]}
    reference = tf.AudioFlamingo3ForConditionalGeneration(tf.AudioFlamingo3Config(
        audio_config=audio_config, text_config=model.llm.config.to_dict(),
        audio_token_id=model.llm.audio_token_id)).eval()
    reference.load_state_dict(_renamed(model.state_dict(), {
        "encoder.encoder.": "model.audio_tower.", "adapter.mlp.0.": "model.multi_modal_projector.linear_1.",
        "adapter.mlp.2.": "model.multi_modal_projector.linear_2.", "llm.model.model.": "model.language_model.",
        "llm.model.lm_head.": "lm_head."}), strict=True)

    def reference_logits(ids, clip):
        features = _whisper_features(model, clip)
        return reference(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=features.input_features,
                         input_features_mask=features.attention_mask).logits[0]

    counts = _assert_same_logits(model, reference_logits, _clips(), ["Transcribe the input speech.", "Describe."])
    assert counts == [25, 16]
