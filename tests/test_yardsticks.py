"""Cards against the whole audio LLMs in transformers: the same weights must give the same logits.

Each test builds a card's tiny preset, copies its weights into transformers' implementation of the published
model (built at the same tiny size), and compares next-token logits over the whole fused sequence, clip for clip.
Our side runs the clips as one padded batch; the reference runs each alone, so padding handling is checked too.
"""

from __future__ import annotations

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


def test_qwen2_audio_card_matches_transformers_qwen2_audio():
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("qwen2-audio", preset="tiny")).eval()
    encoder = model.encoder.config
    reference = tf.Qwen2AudioForConditionalGeneration(tf.Qwen2AudioConfig(
        audio_config={k: getattr(encoder, k) for k in ("d_model", "encoder_layers", "encoder_attention_heads",
                                                       "encoder_ffn_dim", "num_mel_bins", "max_source_positions")},
        text_config=model.llm.config.to_dict(), audio_token_id=model.llm.audio_token_id)).eval()
    ours = model.state_dict()
    mapped = {"model.audio_tower." + k[len("encoder.encoder."):]: v for k, v in ours.items()
              if k.startswith("encoder.encoder.")}
    mapped |= {"model.multi_modal_projector.linear." + k[len("adapter.proj."):]: v for k, v in ours.items()
               if k.startswith("adapter.proj.")}
    mapped |= {"model.language_model." + k[len("llm.model.model."):]: v for k, v in ours.items()
               if k.startswith("llm.model.model.")}
    mapped["lm_head.weight"] = ours["llm.model.lm_head.weight"]
    reference.load_state_dict(mapped, strict=True)

    generator = torch.Generator().manual_seed(1)
    clips = [torch.randn(16000, generator=generator) * 0.1, torch.randn(9970, generator=generator) * 0.1]
    batch = model.prepare_batch(clips, prompts=["What does the speaker say?", "Describe the sound."])
    with torch.no_grad():
        embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
        logits = model(batch).logits
    counts = [len(e) for e in embeds]
    assert counts == [25, 16]  # 25 frames per second (mel frames counted as the feature extractor's mask)

    extractor = tf.WhisperFeatureExtractor(feature_size=encoder.num_mel_bins)
    for i, clip in enumerate(clips):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        ids = _expand_audio_tags(ids, model.llm.audio_token_id, counts[i:i + 1])
        features = extractor(clip.numpy(), sampling_rate=16000, return_attention_mask=True, padding="max_length",
                             return_tensors="pt")
        with torch.no_grad():
            expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 input_features=features.input_features,
                                 feature_attention_mask=features.attention_mask).logits[0]
        torch.testing.assert_close(logits[i, : len(expected)], expected, atol=2e-4, rtol=1e-4)
