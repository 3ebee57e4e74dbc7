"""Every card in cards/: metadata, the tiny preset trains exactly what the card says, generation, the
published parameter count, and the resolved card round-trips through YAML."""


import pytest
import torch
import yaml

import slmzoo
from slmzoo.card.loader import dump_yaml, load_card
from tests.conftest import REPO, audio_share, speechlike

CARDS = sorted(p.stem for p in (REPO / "cards").glob("*.yaml"))
# Cards of the speech-understanding architecture (speechlm, and unit_speechlm, which also speaks in units): audio +
# prompt in, text out. The speech-to-speech cards (duplex_s2s) have tests of their own (tests/test_duplex.py); the
# unit cards' speech out is in tests/test_vocoder.py.
TEXT_CARDS = [n for n in CARDS if yaml.safe_load((REPO / "cards" / f"{n}.yaml").read_text(encoding="utf-8")).get(
    "architecture", "speechlm") in ("speechlm", "unit_speechlm")]
# Fusions whose zero-initialised gates (or, for cross_attention, residual outputs) make the untrained model equal
# the text LLM: one step's gradient reaches the gates (and the blocks' weights as exact zeros), but nothing upstream
# of the gates moves yet.
ZERO_GATED = {"gated_xattn", "adapter_prompt", "cross_attention"}
# The survey systems the zoo covers (the list); each needs its own card.
EXPECTED = {"salm", "bestow", "salmonn", "qwen-audio", "qwen2-audio", "ltu", "ltu-as", "gama", "llasm", "speech-llama",
            "speechgpt", "voxtlm", "spirit-lm", "wavllm", "audio-flamingo", "llama3-speech", "audiochatllama",
            "cosmic", "pengi", "mu-llama", "slm", "speechverse", "seed-asr", "macaw-llm", "ultravox",
            "granite-speech", "voxtral"}


def raw(name: str) -> dict:
    return yaml.safe_load((REPO / "cards" / f"{name}.yaml").read_text(encoding="utf-8"))


def test_every_survey_system_has_a_card():
    assert EXPECTED <= set(CARDS), sorted(EXPECTED - set(CARDS))


@pytest.mark.parametrize("name", CARDS)
def test_card_metadata(name):
    data = raw(name)
    assert data["name"] == name
    assert str(data.get("paper", "")).startswith("http"), "paper: a link"
    assert len(data.get("description", "")) > 80, "description: a paragraph"
    assert isinstance(data.get("year"), int) and 2019 <= data["year"] <= 2030
    assert "tiny" in (data.get("presets") or {})
    tiny = load_card(name, preset="tiny").data
    assert tiny["llm"]["tokenizer"] == "bytes" and tiny["llm"]["pretrained"] is None
    assert tiny["llm"]["dtype"] == "float32" and tiny["train"]["precision"] == "fp32"
    blocks = [tiny["encoder"], *tiny["encoder"].get("encoders", [])]
    assert all(b.get("pretrained") is None for b in blocks), "tiny presets build offline"


@pytest.mark.parametrize("name", TEXT_CARDS)
def test_tiny_preset_trains_what_the_card_trains(name):
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card(name, preset="tiny"))
    model.train()
    batch = model.prepare_batch([speechlike(0.6), speechlike(0.35, 1)], None, ["one two", "nine"])
    out = model(batch)
    assert torch.isfinite(out.loss), out.loss
    out.loss.backward()
    params = dict(model.named_parameters())
    frozen_with_grad = [n for n, p in params.items() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    trained_without_grad = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not trained_without_grad, f"trainable but not reached by the loss: {trained_without_grad[:8]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    # every component with trainable weights learns something (gated fusions: only the gates at step one)
    fusion_type = model.card.data["fusion"]["type"]
    sections = ["fusion"] if fusion_type in ZERO_GATED else ["encoder", "adapter", "fusion", "llm"]
    for section in sections:
        grads = [p.grad for p in getattr(model, section).parameters() if p.requires_grad]
        if grads:
            assert any(g.abs().sum() > 0 for g in grads), f"{section}: every gradient is zero"
    # the trainable set is what the card's train section names, not everything
    if model.card.data["train"]["freeze"]:
        assert any(not p.requires_grad for p in params.values())

    model.eval()
    texts = model.generate([speechlike(0.4, 2), speechlike(0.25, 3)], max_new_tokens=3)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)


# What a tiny preset may change: sizes (numbers, `config`), the feature extractor (a random encoder may need
# another log-mel normalisation), where weights come from, the tokenizer and dtype, and LoRA (a random LLM learns
# only when trained in full: `train.freeze: []`). Everything else (component types, variants, layer choices,
# fusion and adapter options) is the architecture.
SIZE_ONLY = {"pretrained", "tokenizer", "dtype", "attn_implementation", "config", "lora", "codebook"}


def architecture_of(block, path: str) -> dict[str, object]:
    """The categorical settings of a card block, flattened to ``{"encoder.encoders[0].type": "whisper", ...}``;
    a ``config``'s ``model_type`` counts (a tiny Qwen3 is still a Qwen3)."""
    found: dict[str, object] = {}
    if isinstance(block, dict):
        for key, value in block.items():
            if key == "config" and isinstance(value, dict) and "model_type" in value:
                found[f"{path}.config.model_type"] = value["model_type"]
            if key not in SIZE_ONLY and key != "feature_extractor":
                found.update(architecture_of(value, f"{path}.{key}"))
    elif isinstance(block, list) and block and all(isinstance(item, dict) for item in block):
        for i, item in enumerate(block):
            found.update(architecture_of(item, f"{path}[{i}]"))
    elif isinstance(block, (str, bool)) or block is None:
        found[path] = block
    return found


@pytest.mark.parametrize("name", CARDS)
def test_tiny_preset_is_the_cards_architecture(name):
    full, tiny = load_card(name), load_card(name, preset="tiny")
    assert tiny.data.get("architecture") == full.data.get("architecture")
    assert tiny.sections == full.sections
    for section in full.sections:
        expected, got = architecture_of(full.data.get(section), section), architecture_of(tiny.data.get(section), section)
        changed = {key: (expected.get(key), got.get(key)) for key in expected.keys() | got.keys()
                   if expected.get(key) != got.get(key)}
        assert not changed, f"{name}: the tiny preset changes the architecture (full, tiny): {changed}"


def initial_attention_logit_std(attention: torch.nn.Module, width: int, samples: int = 512) -> float:
    """Std of one attention module's logits ``q . k * scaling`` at initialisation, for inputs of unit RMS (what
    its input norm hands it): ~1 means attention can pick positions from step one, ~0.05 means uniform."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, samples, width, generator=generator)
    if hasattr(attention, "c_attn"):  # GPT-2: one projection for queries, keys and values
        q, k = attention.c_attn(x)[..., :width], attention.c_attn(y)[..., width:2 * width]
    else:
        q, k = attention.q_proj(x), attention.k_proj(y)
    q, k = q.view(samples, -1, attention.head_dim), k.view(samples, -1, attention.head_dim)
    if hasattr(attention, "q_norm"):  # Qwen3's QK-norm
        q, k = attention.q_norm(q), attention.k_norm(k)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)  # grouped-query heads
    return ((q * k).sum(-1) * getattr(attention, "scaling", attention.head_dim ** -0.5)).std().item()


# Benchmarked families (benchmarks/bench_architectures.py) with a tiny Llama or GPT-2 built from scratch.
# At width 128 transformers' initializer_range 0.02 gives a Llama (no QK-norm) logits of std 0.05, near-uniform
# attention; at 0.05 (std 0.32) the ultravox tiny preset's digits loss is 0.53 / 0.09 at steps 100 / 500 against
# 0.79 / 0.13, as fast as the same model with Qwen3's QK-norm (salm's LLM, std 0.99: 0.59 / 0.09).
# Not bestow and speech-llama: their Llamas learn faster at 0.02 (bestow: dev CER 28% against 50% at step 1200 at
# 0.05; speech-llama: 8% against 18% at step 1400; bench notes).
FROM_SCRATCH_ATTENTION = ["salm", "ultravox", "cosmic", "ltu-as", "speechgpt", "mu-llama", "pengi", "salmonn",
                          "audio-flamingo"]


@pytest.mark.parametrize("name", FROM_SCRATCH_ATTENTION)
def test_tiny_llm_attention_is_not_uniform_at_init(name):
    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card(name, preset="tiny"))
    width = model.llm.base.config.get_text_config().hidden_size
    with torch.no_grad():
        stds = [initial_attention_logit_std(getattr(layer, "self_attn", None) or layer.attn, width)
                for layer in model.llm.decoder_layers()]
    assert min(stds) > 0.2, f"{name}: initial attention logits of std {min(stds):.3f} (raise llm.config.initializer_range)"


def test_tiny_granite_scales_its_logits_with_width():
    """Granite is trained with muP: its logits are divided by width / 256 (the released dense Granites: 16 at hidden
    4096, 8 at 2048, 6 at 1536). The tiny 128-wide Granite at the 8B's 16: digits loss 5.2 / 2.9 at steps 50 / 250;
    at 0.5: 2.2 / 1.1."""
    for preset in (None, "tiny"):
        config = load_card("granite-speech", preset=preset).data["llm"]["config"]
        assert config["logits_scaling"] == config["hidden_size"] / 256, preset


DIGITS = REPO.parent / "shared" / "data" / "digits"
# Encoders whose output is not the clips' own frames: Voxtral's tower hands over the whole 30 s window (silence too).
WHOLE_WINDOW = {"voxtral"}


@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason="digits corpus not found")
@pytest.mark.parametrize("name", [n for n in CARDS if n not in WHOLE_WINDOW])
def test_tiny_encoder_output_starts_with_the_audio_in_it(name):
    """From random weights each tiny encoder's output must depend on the audio: the part of it that differs between
    eight digit clips at the same frame positions is over a fifth. A random Whisper with transformers' std-0.02
    conv stem gave 2% (the positions drown the audio), a FastConformer's std-0.02 subsampling about nothing: models
    built on them trained on the text alone."""
    import json

    import soundfile as sf

    rows = [json.loads(line) for line in (DIGITS / "train.jsonl").read_text().splitlines()[:8]]
    waves = [torch.tensor(sf.read(DIGITS / r["audio_filepath"], dtype="float32")[0]) for r in rows]
    n = min(len(w) for w in waves)
    torch.manual_seed(0)
    model = slmzoo.build(load_card(name, preset="tiny")).eval()
    with torch.no_grad():
        out = model.encoder(torch.stack([w[:n] for w in waves]), torch.full((8,), n))
    hidden = out.hidden if out.hidden.dim() == 3 else out.hidden[:, -1]  # [B, T, C] (all layers: the last)
    hidden = hidden[:, : int(out.lengths.min())]
    share = audio_share(hidden)
    assert share > 0.2, f"{name}: the tiny encoder's output is {share:.1%} audio at initialisation"


PUBLISHED = [n for n in CARDS if raw(n).get("published_params")]


@pytest.mark.parametrize("name", PUBLISHED)
def test_meta_build_matches_published_params(name):
    card = slmzoo.load_card(name)
    model = slmzoo.build(card, meta=True)
    total = model.num_parameters()
    published = card.data["published_params"]
    assert abs(total / published - 1) <= 0.03, f"{name}: meta build {total:,} vs published {published:,}"
    assert sum(row["params"] for row in model.summary()) >= total  # rows cover every parameter


def test_every_card_says_whether_its_sources_state_a_total():
    """A card without published_params says so, and where its author looked, in a ``# No published_params:``
    comment: a missing count is then a finding, not a card nobody checked."""
    silent = [n for n in CARDS if not raw(n).get("published_params")
              and "# No published_params:" not in (REPO / "cards" / f"{n}.yaml").read_text(encoding="utf-8")]
    assert not silent, f"cards with neither published_params nor a '# No published_params:' note: {silent}"


def meta_parameters(model_class, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(config).parameters())


def released_qwen2_audio() -> int:
    """Qwen2-Audio-7B's config.json: the code defaults with its text_config (released-checkpoints.md, section 2)."""
    import transformers

    text = {"model_type": "qwen2", "vocab_size": 156032, "intermediate_size": 11008, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192}
    return meta_parameters(transformers.Qwen2AudioForConditionalGeneration,
                           transformers.Qwen2AudioConfig(text_config=text))


def released_voxtral() -> int:
    """VoxtralConfig's defaults are Voxtral Mini 3B (released-checkpoints.md, section 3)."""
    import transformers

    return meta_parameters(transformers.VoxtralForConditionalGeneration, transformers.VoxtralConfig())


def released_audio_flamingo_3() -> int:
    """The config transformers' convert_audioflamingo3_to_hf.py builds (and loads the original weights into,
    strictly) for nvidia/audio-flamingo-3-hf: Qwen2.5-7B's shape with AF3's 151672-row vocabulary."""
    import transformers

    text = transformers.Qwen2Config(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                                    num_hidden_layers=28, num_key_value_heads=4, rope_theta=1e6, vocab_size=151672)
    return meta_parameters(transformers.AudioFlamingo3ForConditionalGeneration,
                           transformers.AudioFlamingo3Config(text_config=text))


def released_ultravox() -> int:
    """Ultravox v0.5 (Llama 3.1 8B): whisper-large-v3-turbo's encoder + UltravoxProjector (stack 8 x 1280, RMSNorm,
    Linear to 4096 without bias, SwiGLU halving it, RMSNorm, Linear 2048 -> 4096; released-checkpoints.md, section 6)
    + Llama-3.1-8B."""
    import transformers

    whisper = transformers.WhisperConfig(d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                                         encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500)
    llama = transformers.LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=8, intermediate_size=14336, vocab_size=128256)
    stacked = 8 * 1280
    projector = stacked + stacked * 4096 + 2048 + 2048 * 4096
    return (meta_parameters(transformers.models.whisper.modeling_whisper.WhisperEncoder, whisper) + projector
            + meta_parameters(transformers.LlamaForCausalLM, llama))


RELEASED = {"qwen2-audio": released_qwen2_audio, "voxtral": released_voxtral,
            "audio-flamingo-3": released_audio_flamingo_3, "ultravox": released_ultravox}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_full_size_card_has_the_released_checkpoints_parameters(name):
    """The full-size card's dimensions are the release's: its meta build has exactly as many parameters as
    transformers' model of the released config (a wrong vocabulary, width or depth shows here; the tiny
    yardsticks in tests/test_yardsticks.py check the computation)."""
    assert slmzoo.build(slmzoo.load_card(name), meta=True).num_parameters() == RELEASED[name]()


@pytest.mark.parametrize("name", CARDS)
@pytest.mark.parametrize("preset", [None, "tiny"])
def test_resolved_card_round_trips(name, preset, tmp_path):
    card = load_card(name, preset=preset)
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(card.data), encoding="utf-8")
    again = load_card(path)
    assert again.data == card.data
    assert again.to_yaml() == card.to_yaml()


def test_diff_works_between_any_two_cards():
    from slmzoo.card.diff import diff_cards

    resolved = {name: slmzoo.load_card(name).data for name in CARDS}
    for a in CARDS:
        assert diff_cards(resolved[a], resolved[a]) == []
        for b in CARDS:
            if a < b:
                forward, backward = diff_cards(resolved[a], resolved[b]), diff_cards(resolved[b], resolved[a])
                assert forward and sorted(c.path for c in forward) == sorted(c.path for c in backward), (a, b)
