"""conformer: fastconformer (transformers' Parakeet) and wav2vec2_conformer, tiny random checkpoints saved with
save_pretrained, checked against transformers' own feature extractors and models."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from slmzoo.builder import BuildContext
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.conformer import Conformer, FastConformerEncoder, Wav2Vec2ConformerEncoder
from slmzoo_plugins.encoders.specs import ConformerOptions

FAST = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_kernel_size=5,
            subsampling_conv_channels=8, num_mel_bins=16, layerdrop=0.0)
W2C = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
           conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
           conv_depthwise_kernel_size=7, feat_extract_norm="layer", vocab_size=12, layerdrop=0.0)
LENGTHS = [9000, 5321, 2000]


pytestmark = pytest.mark.usefixtures("one_thread")


def clips(seed=0, lengths=LENGTHS):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) * 0.1 for n in lengths]


def pad(waves):
    audio = torch.zeros(len(waves), max(len(w) for w in waves))
    for i, wave in enumerate(waves):
        audio[i, : len(wave)] = wave
    return audio, torch.tensor([len(w) for w in waves])


@pytest.fixture(scope="module")
def parakeet(tmp_path_factory):
    """A ParakeetForCTC checkpoint (encoder + CTC head) with its feature extractor, as nvidia/parakeet-ctc-* hold."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("parakeet")
    model = tf.ParakeetForCTC(tf.ParakeetCTCConfig(encoder_config=FAST, vocab_size=10, pad_token_id=9))
    model.save_pretrained(folder)
    tf.ParakeetFeatureExtractor(feature_size=16).save_pretrained(folder)
    return SimpleNamespace(folder=str(folder), reference=tf.ParakeetForCTC.from_pretrained(folder).encoder.eval())


def test_fastconformer_matches_reference(parakeet):
    encoder = Conformer(ConformerOptions(pretrained=parakeet.folder), None).eval()
    assert isinstance(encoder, FastConformerEncoder)
    assert (encoder.output_dim, encoder.frame_rate, encoder.num_layers, encoder.sampling_rate) == (32, 12.5, 2, 16000)
    waves = clips()
    extractor = tf.ParakeetFeatureExtractor.from_pretrained(parakeet.folder)
    inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt")
    features, feature_lengths = encoder.features(*pad(waves))
    torch.testing.assert_close(features, inputs.input_features[:, : features.shape[1]], atol=1e-5, rtol=0)
    assert not inputs.input_features[:, features.shape[1] :].any()
    assert feature_lengths.tolist() == inputs.attention_mask.sum(-1).tolist()
    with torch.no_grad():
        expected = parakeet.reference(**inputs, output_hidden_states=True)
        out = encoder(*pad(waves))
        layer1 = Conformer(ConformerOptions(pretrained=parakeet.folder, layer=1), None).eval()(*pad(waves))
    assert out.lengths.tolist() == expected.attention_mask.sum(-1).tolist()
    for i, n in enumerate(out.lengths.tolist()):
        torch.testing.assert_close(out.hidden[i, :n], expected.last_hidden_state[i, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(layer1.hidden[i, :n], expected.hidden_states[1][i, :n], atol=1e-5, rtol=0)
        assert not out.hidden[i, n:].any()


@pytest.mark.parametrize("variant", ["fastconformer", "wav2vec2_conformer"])
def test_clip_alone_equals_clip_in_batch(variant):
    """Both variants, every layer (the contract kit checks the tiny presets' fastconformer, last layer)."""
    torch.manual_seed(0)
    encoder = Conformer(ConformerOptions(variant=variant, config=FAST if variant == "fastconformer" else W2C,
                                         layer="all"), None).eval()
    waves = clips(1)
    with torch.no_grad():
        batch = encoder(*pad(waves))
        for i, wave in enumerate(waves):
            alone = encoder(wave[None], torch.tensor([len(wave)]))
            n = int(batch.lengths[i])
            assert alone.hidden.shape[2] == n
            # float32 rounding on layer 0, the x-scaled frames (~sqrt(d_model) rms)
            torch.testing.assert_close(batch.hidden[i, :, :n], alone.hidden[0], atol=3e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def w2v2_conformer(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("w2c")
    tf.Wav2Vec2ConformerForCTC(tf.Wav2Vec2ConformerConfig(**W2C)).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return SimpleNamespace(folder=str(folder), reference=tf.Wav2Vec2ConformerModel.from_pretrained(folder).eval())


def test_wav2vec2_conformer_matches_reference_per_clip(w2v2_conformer):
    """The original's conv modules do not mask padding, so it is right only on a clip alone: compare each clip of
    the plugin's batch with the original (feature extractor + model) on that clip alone."""
    options = ConformerOptions(variant="wav2vec2_conformer", pretrained=w2v2_conformer.folder)
    encoder = Conformer(options, None).eval()
    assert isinstance(encoder, Wav2Vec2ConformerEncoder) and (encoder.frame_rate, encoder.output_dim) == (1600.0, 32)
    waves = clips(2, [3000, 1800, 900])
    extractor = tf.Wav2Vec2FeatureExtractor.from_pretrained(w2v2_conformer.folder)
    with torch.no_grad():
        out = encoder(*pad(waves))
        layer1 = Conformer(options.model_copy(update={"layer": 1}), None).eval()(*pad(waves))
        for i, wave in enumerate(waves):
            inputs = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")
            expected = w2v2_conformer.reference(**inputs, output_hidden_states=True)
            n = int(out.lengths[i])
            assert expected.last_hidden_state.shape[1] == n
            torch.testing.assert_close(out.hidden[i, :n], expected.last_hidden_state[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(layer1.hidden[i, :n], expected.hidden_states[1][0], atol=1e-5, rtol=0)
        batched_reference = w2v2_conformer.reference(**extractor([w.numpy() for w in waves], sampling_rate=16000,
                                                                 padding=True, return_tensors="pt"))
    n = int(out.lengths[2])  # padding leaks into the short clip through the unmasked depthwise convs there
    assert (batched_reference.last_hidden_state[2, :n] - out.hidden[2, :n]).abs().max() > 1e-4


def test_strict_loading_names_keys(parakeet, tmp_path):
    shutil.copytree(parakeet.folder, tmp_path / "bad")
    tensors = load_file(tmp_path / "bad" / "model.safetensors")
    tensors.pop("encoder.layers.0.conv.depthwise_conv.weight")
    tensors["encoder.layers.0.extra"] = torch.zeros(2)
    save_file(tensors, tmp_path / "bad" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError) as error:
        Conformer(ConformerOptions(pretrained=str(tmp_path / "bad")), None)
    message = str(error.value)
    assert "missing weight layers.0.conv.depthwise_conv.weight" in message
    assert "unexpected weight encoder.layers.0.extra" in message and "ctc_head" not in message


def test_meta_build_counts_parameters(parakeet, w2v2_conformer):
    context = BuildContext(card=None, meta=True)
    cases = [(ConformerOptions(pretrained=parakeet.folder), parakeet.reference),
             (ConformerOptions(config=FAST), parakeet.reference),
             (ConformerOptions(variant="wav2vec2_conformer", pretrained=w2v2_conformer.folder),
              w2v2_conformer.reference)]
    for options, reference in cases:
        with torch.device("meta"):
            encoder = Conformer(options, context)
        assert all(p.is_meta for p in encoder.parameters())
        assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in reference.parameters())


def test_bad_input():
    encoder = Conformer(ConformerOptions(config=FAST), None).eval()
    assert encoder.min_samples == 320  # the per-feature std needs two feature frames
    good = torch.randn(2, 4000)
    cases = {
        "fewer than the 320": (good, torch.tensor([4000, 0])),
        "clips \\[1\\] have \\[319\\]": (good, torch.tensor([4000, 319])),
        "NaN or inf": (torch.where(good > 2, torch.inf, good), torch.tensor([4000, 4000])),
        "stereo": (torch.randn(2, 2, 4000), torch.tensor([4000, 4000])),
    }
    for message, (audio, lengths) in cases.items():
        with pytest.raises(ValueError, match=message):
            encoder(audio, lengths)
    with torch.no_grad():
        silence = encoder(torch.zeros(2, 4000), torch.tensor([4000, 320]))
    assert torch.isfinite(silence.hidden).all() and silence.lengths.tolist() == [4, 1]
    with pytest.raises(ValueError, match="normalize applies to variant wav2vec2_conformer"):
        Conformer(ConformerOptions(config=FAST, normalize=True), None)


def test_wav2vec2_conformer_masks_under_activation_checkpointing():
    """Checkpointing reruns the conv modules during backward: they must see the same padding mask again."""
    torch.manual_seed(0)
    no_dropout = {k: 0.0 for k in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
                                   "conformer_conv_dropout")}
    encoder = Conformer(ConformerOptions(variant="wav2vec2_conformer", config={**W2C, **no_dropout,
                                                                              "apply_spec_augment": False}), None)
    encoder.train()
    for module in encoder.modules():  # training-mode BatchNorm would mix the batch: not what is tested here
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eval()
    audio, lengths = pad(clips(3, [3000, 1000]))
    grads = []
    for checkpointing in (False, True):
        encoder.zero_grad()
        if checkpointing:
            encoder.model.gradient_checkpointing_enable()
        encoder(audio, lengths).hidden.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def _to_nemo_key(key: str) -> str:
    """ParakeetEncoder name -> NeMo ConformerEncoder name (the inverse of the conversion mapping)."""
    import re

    for pattern, replacement in [(r"^subsampling\.layers\.", "pre_encode.conv."),
                                 (r"^subsampling\.linear\.", "pre_encode.out."),
                                 (r"^encode_positions\.", "pos_enc."),
                                 (r"^layers\.(\d+)\.conv\.norm\.", r"layers.\1.conv.batch_norm."),
                                 (r"\bq_proj\b", "linear_q"), (r"\b([kv])_proj\b", r"linear_\1"),
                                 (r"\bo_proj\b", "linear_out"), (r"\bbias_([uv])\b", r"pos_bias_\1"),
                                 (r"\brelative_k_proj\b", "linear_pos")]:
        key = re.sub(pattern, replacement, key)
    return "encoder." + key


def test_fastconformer_loads_the_encoder_of_a_nemo_checkpoint(tmp_path):
    """A .nemo archive (model_config.yaml + model_weights.ckpt with NeMo names, a decoder and featurizer buffers
    besides the encoder) loads strictly into the same encoder as the transformers-format weights."""
    import io
    import tarfile

    import yaml

    torch.manual_seed(0)
    reference = Conformer(ConformerOptions(config=FAST), None).eval()
    state = {_to_nemo_key(k): v for k, v in reference.model.state_dict().items()}
    assert "encoder.layers.0.self_attn.linear_q.weight" in state and "encoder.pre_encode.out.weight" in state
    state |= {"decoder.decoder_layers.0.weight": torch.zeros(5, 32, 1),
              "preprocessor.featurizer.fb": torch.zeros(1, 16, 257)}
    config = {"encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 16, "n_layers": 2,
                          "d_model": 32, "n_heads": 2, "conv_kernel_size": 5, "subsampling_factor": 8,
                          "subsampling_conv_channels": 8, "ff_expansion_factor": 2, "xscaling": True,
                          "dropout": 0.1, "self_attention_model": "rel_pos"},
              "preprocessor": {"sample_rate": 16000, "window_size": 0.025, "window_stride": 0.01, "features": 16,
                               "n_fft": 512, "dither": 1e-5}}
    def write_nemo(path, state):
        with tarfile.open(path, "w") as tar:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            for name, payload in (("./model_config.yaml", yaml.safe_dump(config).encode()),
                                  ("./model_weights.ckpt", buffer.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return str(path)

    # intermediate_size is not in NeMo's config (the conversion ignores ff_expansion_factor): pass it inline
    options = ConformerOptions(pretrained=write_nemo(tmp_path / "tiny.nemo", state), config={"intermediate_size": 64})
    loaded = Conformer(options, None).eval()
    audio = torch.zeros(2, 16000)
    audio[0], audio[1, :9000] = torch.randn(16000) * 0.1, torch.randn(9000) * 0.1
    lengths = torch.tensor([16000, 9000])
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio, lengths).hidden, reference(audio, lengths).hidden)
    # What a self-contained save writes in place of the .nemo rebuilds the same encoder without it.
    standalone = Conformer(ConformerOptions(**loaded.standalone_options()), None).eval()
    assert standalone.feature_settings == loaded.feature_settings and standalone.feature_settings["hop_length"] == 160
    standalone.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        assert torch.equal(standalone(audio, lengths).hidden, loaded(audio, lengths).hidden)
    dropped = next(k for k in state if k.startswith("encoder.layers.1."))
    broken = write_nemo(tmp_path / "broken.nemo", {k: v for k, v in state.items() if k != dropped})
    with pytest.raises(PretrainedLoadError, match="missing weight layers.1."):
        Conformer(options.model_copy(update={"pretrained": broken}), None)


def test_all_features_normalises_each_clip_with_one_mean_and_std():
    """NeMo's ``normalize: all_features``: one mean/std per clip over all its valid frames and mel bins (padding
    stays zero and does not count); the default stays ParakeetFeatureExtractor's per-bin statistics."""
    options = dict(config=FAST, feature_extractor={"normalize": "all_features"})
    encoder = Conformer(ConformerOptions(**options), None).eval()
    waves = clips()
    features, frames = encoder.features(*pad(waves))
    for i, n in enumerate(frames.tolist()):
        valid = features[i, :n]
        assert abs(valid.mean()) < 1e-4 and abs(valid.std() - 1) < 1e-3
        assert valid.mean(0).abs().max() > 0.05  # the bins keep their own levels, unlike per_feature
        assert not features[i, n:].any()
    alone, _ = encoder.features(*pad(waves[1:2]))
    torch.testing.assert_close(alone[0], features[1, : alone.shape[1]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="per_feature, all_features"):
        Conformer(ConformerOptions(config=FAST, feature_extractor={"normalize": "per_clip"}), None)


@pytest.mark.parametrize("factor", [4, 8])
def test_random_fastconformer_starts_with_audio_in_its_frames(factor):
    """From random weights (no ``pretrained``) the subsampling gets He init: its frames have about unit rms at any
    factor before the x-scaling (``sqrt(d_model)``, as NeMo's). transformers' std-0.02 init leaves them ~1e-3 (4x) to
    ~1e-5 (8x) rms after it, under LayerNorm's epsilon, so the encoder output carries no audio and a model trained
    from scratch cannot learn from it. Loading weights is unaffected (the checkpoint's own values)."""
    config = dict(FAST, hidden_size=64, subsampling_factor=factor, subsampling_conv_channels=32, num_mel_bins=80)
    encoder = Conformer(ConformerOptions(config=config), None).eval()
    audio, lengths = pad(clips())
    features, frames = encoder.features(audio, lengths)
    mask = torch.arange(features.shape[1])[None] < frames[:, None]
    with torch.no_grad():
        subsampled = encoder.model.subsampling(features, mask)[0]
    valid = subsampled[0, : int(frames[0]) // factor]
    assert 0.3 < valid.pow(2).mean().sqrt() < 3
    assert encoder.model.input_scale == 8.0  # sqrt(64): the blocks get frames of ~8 rms, as NeMo's xscaling gives
    reference = tf.ParakeetEncoder(tf.ParakeetEncoderConfig(**config)).eval()  # transformers' own init
    with torch.no_grad():
        tiny = reference.subsampling(features, mask)[0] * reference.input_scale
    assert tiny[0, : int(frames[0]) // factor].pow(2).mean().sqrt() < 0.05
