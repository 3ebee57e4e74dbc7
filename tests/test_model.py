"""SpeechLM on the SALM card's tiny preset: loss masking, batching invariance, generation, save/load."""

import numpy as np
import pytest
import torch

import slmzoo
from slmzoo.model import TrainPolicyError
from slmzoo.prompting import IGNORE_INDEX, PromptError
from tests.conftest import speechlike

PROMPT = "Transcribe the audio."


@pytest.fixture
def model():
    """A fresh model per test: a test in train mode moves the FastConformer's BatchNorm statistics."""
    torch.manual_seed(0)
    return slmzoo.build(slmzoo.load_card("salm", preset="tiny")).double().eval()


def test_loss_is_over_response_tokens_only(model):
    batch = model.prepare_batch([speechlike(1.0), speechlike(0.4, 1)], [PROMPT, PROMPT], ["one two", "nine"])
    out = model(batch)
    labels = batch["labels"]
    assert torch.isfinite(out.loss)
    # label positions are exactly the response + end of turn
    answer = [model.tokenizer.decode([t for t in row if t != IGNORE_INDEX]) for row in labels.tolist()]
    assert answer == ["one two<|im_end|>", "nine<|im_end|>"]
    # changing only the prompt text after the audio changes no label, and the loss counts only responses
    assert out.num_tokens == sum(len(a.encode()) for a in ["one two", "nine"]) + 2


def test_loss_equals_manual_cross_entropy_over_response(model):
    batch = model.prepare_batch([speechlike(0.7)], [PROMPT], ["seven"])
    out = model(batch)
    logits = out.logits[0, :-1]
    # rebuild the fused labels: audio frames were inserted, so take the tail of the sequence
    answer = model.tokenizer("seven<|im_end|>", add_special_tokens=False).input_ids
    tail = logits[-len(answer):]
    manual = torch.nn.functional.cross_entropy(tail, torch.tensor(answer))
    assert torch.allclose(out.loss.double(), manual.double(), atol=1e-6)


def test_gradients_reach_every_trained_component(model):
    model.train()
    model.zero_grad()
    batch = model.prepare_batch([speechlike(0.5)], [PROMPT], ["four"])
    model(batch).loss.backward()
    for name in ("encoder", "adapter", "llm"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    model.eval()


def test_batch_composition_does_not_change_outputs(model):
    clips = [speechlike(0.35, 1), speechlike(4.0, 2), speechlike(1.2, 3)]
    alone = [model.generate([c], prompts=[PROMPT], max_new_tokens=12)[0] for c in clips]
    together = model.generate(clips, prompts=[PROMPT] * 3, max_new_tokens=12)
    assert together == alone
    # and the audio embeddings themselves agree on the valid frames
    batch = model.prepare_batch(clips, [PROMPT] * 3)
    embeds, _ = model.encode_audio(batch["audio"].double(), batch["audio_lens"])
    single = model.prepare_batch(clips[:1], [PROMPT])
    first, _ = model.encode_audio(single["audio"].double(), single["audio_lens"])
    assert embeds[0].shape == first[0].shape
    torch.testing.assert_close(embeds[0], first[0], atol=1e-9, rtol=0)


def test_generate_matches_uncached_greedy_decoding(model):
    clip = speechlike(0.8, 5)
    cached = model.generate([clip], prompts=[PROMPT], max_new_tokens=6)[0]
    batch = model.prepare_batch([clip], [PROMPT], padding_side="left")
    embeds, _ = model.encode_audio(batch["audio"].double(), batch["audio_lens"])
    fused = model.fusion.fuse(model.llm, batch["input_ids"], batch["attention_mask"], embeds, padding_side="left")
    x, ids = fused.inputs_embeds, []
    stops = set(model.formatter.stop_token_ids)
    for _ in range(6):
        logits = model.llm.model(inputs_embeds=x, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        if token in stops:
            break
        ids.append(token)
        x = torch.cat([x, model.llm.embed(torch.tensor([[token]]))], dim=1)
    assert cached == model.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_several_audio_segments_and_multi_turn(model):
    chat = [{"role": "user", "content": "First: <|audioplaceholder|>"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Second: <|audioplaceholder|>"}]
    texts = model.generate([[speechlike(0.5), speechlike(0.6, 1)]], prompts=[chat], max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0], str)
    with pytest.raises(PromptError, match="2 audio tag\\(s\\) but 1 audio"):
        model.generate([speechlike(0.5)], prompts=[chat], max_new_tokens=2)


def test_audio_file_paths_and_rates(model, tmp_path):
    import soundfile as sf

    wave = speechlike(0.8, 7)
    sf.write(tmp_path / "a.wav", wave, 16000)
    from scipy.signal import resample_poly

    sf.write(tmp_path / "b.flac", resample_poly(wave, 441, 160).astype(np.float32), 44100)
    out = model.generate([str(tmp_path / "a.wav"), wave], prompts=[PROMPT, PROMPT], max_new_tokens=8)
    assert out[0] == out[1]
    assert isinstance(model.generate([str(tmp_path / "b.flac")], prompts=[PROMPT], max_new_tokens=4)[0], str)
    from slmzoo.audio import AudioError

    with pytest.raises(AudioError, match="nope.wav"):
        model.generate([str(tmp_path / "nope.wav")], prompts=[PROMPT])


def test_save_and_load_give_identical_outputs(model, tmp_path):
    clips = [speechlike(0.6, 11), speechlike(1.5, 12)]
    before = model.generate(clips, prompts=[PROMPT] * 2, max_new_tokens=10)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"model.safetensors", "card.yaml", "slmzoo.json"}
    again = slmzoo.from_pretrained(tmp_path / "m").double()
    assert again.generate(clips, prompts=[PROMPT] * 2, max_new_tokens=10) == before
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_loading_is_strict(model, tmp_path):
    from safetensors.torch import load_file, save_file

    from slmzoo.saving import CheckpointError

    model.save_pretrained(tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    dropped = next(k for k in tensors if k.startswith("adapter."))
    save_file({k: v for k, v in tensors.items() if k != dropped}, tmp_path / "m" / "model.safetensors",
              metadata={"slmzoo_aliases": "{}"})
    with pytest.raises(CheckpointError, match=f"missing tensors: .*{dropped}"):
        slmzoo.from_pretrained(tmp_path / "m")
    save_file({**tensors, "adapter.bogus": torch.zeros(1)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensors not in the model: adapter.bogus"):
        slmzoo.from_pretrained(tmp_path / "m")


def test_train_policy_freezes_components_and_keeps_lora():
    card = slmzoo.load_card("salm", preset="tiny", overrides=["train.freeze=[encoder, llm]", "llm.lora.r=4"])
    model = slmzoo.build(card)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or "lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable)
    card = slmzoo.load_card("salm", preset="tiny", overrides=["train.freeze=[encoder]", "train.trainable=['encoder.*norm_out*']"])
    model = slmzoo.build(card)
    enc = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert enc and all("norm_out" in n for n in enc)
    with pytest.raises(TrainPolicyError, match="'encodr' matches no parameter"):
        slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=["train.freeze=[encodr]"]))


def test_meta_build_counts_full_size_parameters():
    model = slmzoo.build(slmzoo.load_card("ultravox"), meta=True)
    rows = {r["component"]: r for r in model.summary()}
    assert rows["llm"]["params"] == 8_030_261_248  # Llama 3.1 8B
    assert next(model.parameters()).device.type == "meta"
    assert model.audio_tokens_per_second() == pytest.approx(50 / 8)


def test_adapter_auxiliary_ctc_loss_joins_the_training_loss():
    card = slmzoo.load_card("salm", preset="tiny", overrides=[
        "adapter={type: ctc_compress, vocab_size: 300, num_layers: 1, num_heads: 4, ctc_weight: 0.5}"])
    torch.manual_seed(0)
    model = slmzoo.build(card)
    batch = model.prepare_batch([speechlike(0.8), speechlike(0.5, 1)], [PROMPT] * 2, ["one", "two six"])
    out = model(batch)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss) and out.aux_loss > 0
    out.loss.backward()
    assert model.adapter.ctc_head.weight.grad.abs().sum() > 0
    targets = model._response_ids(batch["labels"])
    assert model.tokenizer.decode(targets[1]) == "two six"
    small = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[
        "adapter={type: ctc_compress, vocab_size: 10, num_layers: 1, num_heads: 4, ctc_weight: 1.0}"]))
    with pytest.raises(ValueError, match="vocab_size=10 is too small"):
        small(small.prepare_batch([speechlike(0.5)], [PROMPT], ["one"]))


def test_encoder_lora_from_the_card():
    card = slmzoo.load_card("salm", preset="tiny", overrides=["encoder.lora={r: 4, target_modules: [q_proj, v_proj]}"])
    model = slmzoo.build(card)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("self_attn.q_proj.lora_A" in n for n in trainable)
    model.zero_grad()
    model(model.prepare_batch([speechlike(0.5)], [PROMPT], ["one"])).loss.backward()
    assert all(p.grad is not None for n, p in model.encoder.named_parameters() if p.requires_grad)
    bad = slmzoo.load_card("salm", preset="tiny", overrides=["encoder.lora={target_modules: [query]}"])
    with pytest.raises(ValueError, match="encoder.lora.target_modules: no module named query .*linear1"):
        slmzoo.build(bad)
