"""granite_ctc: Granite Speech's CTC Conformer (transformers' GraniteSpeechCTCEncoder) and its features.

GraniteSpeechFeatureExtractor needs torchaudio, which is not installed: the tests run the extractor's own code with
torchaudio's ``MelSpectrogram`` replaced by :class:`TorchaudioMelSpectrogram`, a transcription of torchaudio's
defaults (float32 filter bank computed as ``melscale_fbanks`` does, ``Spectrogram`` with power 2). Everything after
the mel spectrogram (log, clamp, frame dropping and stacking, audio token counts) is transformers' code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from torch import nn

from slmzoo.builder import BuildContext
from slmzoo.plugins import registry
from slmzoo_plugins.encoders.granite_ctc import GraniteCTCEncoder, GraniteLogMel
from slmzoo_plugins.encoders.hf_loading import PretrainedLoadError
from slmzoo_plugins.encoders.specs import GraniteCTCOptions

# Blocks of 8 frames: every clip below ends in a partial attention block.
ENCODER = dict(input_dim=32, num_layers=2, hidden_dim=32, num_heads=2, dim_head=16, feedforward_mult=2, output_dim=12,
               context_size=8, max_pos_emb=16, conv_kernel_size=5, conv_expansion_factor=2, dropout=0.0)
PROJECTOR = dict(model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, encoder_hidden_size=32)
TEXT = dict(model_type="granite", hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=300)
# 101 mel frames (odd: the last is dropped), 63 (odd), 62 (even), and two clips of the same 31 output frames.
LENGTHS = [16000, 9970, 9760, 9920, 9900]

pytestmark = pytest.mark.usefixtures("one_thread")


class TorchaudioMelSpectrogram(nn.Module):
    """``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, win_length, hop_length, n_mels)`` with its other
    defaults: periodic Hann window, centred reflect-padded STFT, power 2, HTK mel filters without normalisation,
    f_min 0, f_max sample_rate // 2. ``[..., S]`` -> ``[..., n_mels, T]``."""

    def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None, n_mels=128):
        super().__init__()
        self.n_fft, self.win_length = n_fft, win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2

        def hz_to_mel(freq):
            return 2595.0 * math.log10(1.0 + freq / 700.0)

        all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
        m_pts = torch.linspace(hz_to_mel(0.0), hz_to_mel(float(sample_rate // 2)), n_mels + 2)
        f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
        f_diff = f_pts[1:] - f_pts[:-1]
        slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
        down, up = -1.0 * slopes[:, :-2] / f_diff[:-1], slopes[:, 2:] / f_diff[1:]
        self.register_buffer("fb", torch.max(torch.zeros(1), torch.min(down, up)))  # [n_freqs, n_mels]
        self.register_buffer("window", torch.hann_window(self.win_length))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.size()
        spec = torch.stft(waveform.reshape(-1, shape[-1]), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window, center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:]).abs().pow(2.0)
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


def granite_feature_extractor(monkeypatch, **settings) -> tf.GraniteSpeechFeatureExtractor:
    """transformers' GraniteSpeechFeatureExtractor, its torchaudio MelSpectrogram replaced by the transcription."""
    from transformers.models.granite_speech import feature_extraction_granite_speech as module

    monkeypatch.setattr(module, "requires_backends", lambda *args, **kwargs: None)
    fake = SimpleNamespace(transforms=SimpleNamespace(MelSpectrogram=TorchaudioMelSpectrogram))
    monkeypatch.setattr(module, "torchaudio", fake, raising=False)
    return tf.GraniteSpeechFeatureExtractor(**settings)


def clips(lengths=LENGTHS, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) * 0.1 for n in lengths]


def pad(waves):
    audio = torch.full((len(waves), max(len(w) for w in waves)), 7.0)  # garbage padding: it must not matter
    for i, wave in enumerate(waves):
        audio[i, : len(wave)] = wave
    return audio, torch.tensor([len(w) for w in waves])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A sharded GraniteSpeechForConditionalGeneration checkpoint (encoder.*, projector.*, language_model.*) with a
    preprocessor config naming torchaudio's melspec_kwargs, as the released ones."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("granite")
    config = tf.GraniteSpeechConfig(encoder_config=ENCODER, projector_config=PROJECTOR, text_config=TEXT,
                                    audio_token_index=299, has_lora_adapter=False)
    model = tf.GraniteSpeechForConditionalGeneration(config)
    for name, buffer in model.model.encoder.named_buffers():  # BatchNorm statistics that are not the init's
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
    model.save_pretrained(folder, max_shard_size="100KB")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "GraniteSpeechFeatureExtractor", "sampling_rate": 16000,
        "melspec_kwargs": {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 16},
        "projector_window_size": 15, "projector_downsample_rate": 5}))
    return SimpleNamespace(folder=str(folder), reference=model.eval())


def test_registered():
    spec = registry().get("encoder", "granite_ctc")
    assert spec.options is GraniteCTCOptions and spec.load_factory() is GraniteCTCEncoder


# -- features --------------------------------------------------------------------------------------------------------
def test_mel_filters_are_torchaudio_htk_filters():
    from transformers.audio_utils import mel_filter_bank

    ours = GraniteLogMel(n_mels=80).filters
    assert torch.equal(ours, TorchaudioMelSpectrogram(16000, 512, 400, 160, 80).fb)
    # the same triangles as transformers' HTK filters, which are computed in float64
    htk = mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm=None, mel_scale="htk")
    torch.testing.assert_close(ours, torch.from_numpy(htk).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", LENGTHS + [257, 400])
def test_features_match_the_feature_extractor(monkeypatch, n):
    extractor = granite_feature_extractor(monkeypatch, n_mels=16)
    wave = clips([n], seed=n)[0]
    expected = extractor([wave])
    features = GraniteLogMel(n_mels=16)(wave)
    assert features.shape == ((n // 160 + 1) // 2, 32)
    torch.testing.assert_close(features, expected["input_features"][0], atol=1e-5, rtol=0)
    # the number of audio tokens the processor writes for this clip: whole 15-frame windows, 3 queries each
    assert expected["audio_embed_sizes"] == [math.ceil(len(features) / 15) * 3]


def test_features_formula_by_hand():
    """Log10 of the mel power, floored at 1e-10 and at max - 8, then / 4 + 1; odd frame dropped; pairs stacked."""
    layer = GraniteLogMel(n_mels=16)
    wave = clips([1000])[0]  # 7 mel frames: the 7th is dropped, 3 stacked frames
    stft = torch.stft(wave, 512, 160, 400, window=torch.hann_window(400), return_complex=True)
    mel = (stft.abs() ** 2).T @ layer.filters
    log_mel = torch.log10(mel.clamp(min=1e-10))
    log_mel = torch.maximum(log_mel, log_mel.max() - 8) / 4 + 1
    torch.testing.assert_close(layer(wave), log_mel[:6].reshape(3, 32))
    silence = layer(torch.zeros(1000))  # log10(1e-10) everywhere: max - 8 never binds
    torch.testing.assert_close(silence, torch.full((3, 32), -10 / 4 + 1))


# -- the encoder -----------------------------------------------------------------------------------------------------
def test_loads_the_encoder_of_a_whole_model_checkpoint(checkpoint):
    encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder), None)
    reference = checkpoint.reference.model.encoder.state_dict()
    assert encoder.model.state_dict().keys() == reference.keys()
    assert all(torch.equal(value, reference[key]) for key, value in encoder.model.state_dict().items())
    assert encoder.feature_settings == dict(sampling_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=16)
    assert (encoder.output_dim, encoder.frame_rate, encoder.num_layers, encoder.sampling_rate) == (32, 50.0, 2, 16000)


def test_matches_the_reference_clip_by_clip_in_any_batch(checkpoint, monkeypatch):
    encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder), None).eval()
    extractor = granite_feature_extractor(monkeypatch, n_mels=16)
    waves = clips()
    with torch.no_grad():
        out = encoder(*pad(waves))
        expected = [checkpoint.reference.model.encoder(extractor([w])["input_features"]).last_hidden_state[0]
                    for w in waves]
    assert out.lengths.tolist() == [len(e) for e in expected] == [50, 31, 31, 31, 31]
    for i, reference in enumerate(expected):
        torch.testing.assert_close(out.hidden[i, : len(reference)], reference, atol=1e-5, rtol=1e-5)
        assert not out.hidden[i, len(reference):].any()  # padded frames are zeros
    # Why clip by clip: the reference itself, given the padded batch, changes the short clips' frames.
    with torch.no_grad():
        batched = checkpoint.reference.model.encoder(extractor(waves)["input_features"]).last_hidden_state
    assert not torch.allclose(batched[1, :31], expected[1], atol=1e-3)


def test_layer_selection_is_transformers_hidden_states(checkpoint):
    waves = clips(LENGTHS[:2])
    reference = checkpoint.reference.model.encoder
    features = GraniteLogMel(n_mels=16)(waves[1])[None]
    with torch.no_grad():
        states = reference(features, output_hidden_states=True).hidden_states
        for layer in (0, 1, -1):  # 1: the middle layer, with the self-conditioning term added
            encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder, layer=layer), None).eval()
            torch.testing.assert_close(encoder(*pad(waves)).hidden[1, :31], states[layer][0], atol=1e-5, rtol=1e-5)
        everything = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder, layer="all"), None).eval()
        out = everything(*pad(waves))
    assert everything.stacks_layers and out.hidden.shape == (2, 3, 50, 32)
    torch.testing.assert_close(out.hidden[1, :, :31], torch.cat(states), atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_encoder(checkpoint):
    encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder), None).train()
    out = encoder(*pad(clips(LENGTHS[:3])))
    out.hidden.sum().backward()
    assert encoder.model.input_linear.weight.grad.abs().sum() > 0
    assert encoder.model.layers[-1].post_norm.weight.grad.abs().sum() > 0


def test_bare_encoder_checkpoint_and_inline_config(tmp_path, checkpoint):
    checkpoint.reference.model.encoder.save_pretrained(tmp_path)
    bare = GraniteCTCEncoder(GraniteCTCOptions(pretrained=str(tmp_path)), None)
    for key, value in checkpoint.reference.model.encoder.state_dict().items():
        assert torch.equal(bare.model.state_dict()[key], value)
    assert bare.feature_settings["n_mels"] == 16  # no preprocessor config: input_dim / 2
    inline = GraniteCTCEncoder(GraniteCTCOptions(config=ENCODER), None)
    assert inline.model.config.context_size == 8 and inline.output_dim == 32


def test_standalone_options_rebuild_the_same_encoder(checkpoint):
    encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder), None).eval()
    options = GraniteCTCOptions(pretrained=checkpoint.folder, **encoder.standalone_options())
    again = GraniteCTCEncoder(options, BuildContext(card=None, load_weights=False)).eval()
    again.load_state_dict(encoder.state_dict())
    audio, lengths = pad(clips(LENGTHS[:2]))
    with torch.no_grad():
        torch.testing.assert_close(again(audio, lengths).hidden, encoder(audio, lengths).hidden)


def test_meta_build_uses_the_inline_config(checkpoint):
    with torch.device("meta"):
        encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained="ibm-granite/not-downloaded", config=ENCODER),
                                    BuildContext(card=None, meta=True))
    assert all(p.is_meta for p in encoder.parameters()) and encoder.output_dim == 32


def test_strict_loading_and_setting_errors(checkpoint):
    with pytest.raises(PretrainedLoadError, match="shape mismatch input_linear.weight"):
        GraniteCTCEncoder(GraniteCTCOptions(pretrained=checkpoint.folder, config={"input_dim": 40}), None)
    with pytest.raises(ValueError, match="encoder.feature_extractor: n_mels=40 .*input_dim is 32"):
        GraniteCTCEncoder(GraniteCTCOptions(config=ENCODER, feature_extractor={"n_mels": 40}), None)
    with pytest.raises(ValueError, match="unknown setting.*n_mel\\b"):
        GraniteCTCEncoder(GraniteCTCOptions(config=ENCODER, feature_extractor={"n_mel": 16}), None)
    encoder = GraniteCTCEncoder(GraniteCTCOptions(config=ENCODER), None)
    with pytest.raises(ValueError, match="fewer than the 257"):
        encoder(torch.zeros(1, 200), torch.tensor([200]))


def test_hub_download_skips_shards_without_encoder_weights(checkpoint, monkeypatch):
    import huggingface_hub

    folder = Path(checkpoint.folder)
    requested = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **_: str(folder / name))

    def snapshot_download(repo, allow_patterns=None, **_):
        requested.extend(allow_patterns)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    read_config = tf.AutoConfig.from_pretrained
    monkeypatch.setattr(tf.AutoConfig, "from_pretrained", lambda repo, **kwargs: read_config(str(folder), **kwargs))
    encoder = GraniteCTCEncoder(GraniteCTCOptions(pretrained="ibm-granite/tiny", config=None), None)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {file for key, file in weight_map.items() if key.startswith("encoder.")}
    assert set(requested) == needed and len(needed) < len(set(weight_map.values()))
    reference = checkpoint.reference.model.encoder.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in encoder.model.state_dict().items())


def test_full_save_rebuilds_without_the_checkpoint(tmp_path, checkpoint):
    import yaml

    import slmzoo

    source = tmp_path / "source"
    checkpoint.reference.save_pretrained(source)
    settings = {"sample_rate": 16000, "n_fft": 512, "win_length": 320, "hop_length": 160, "n_mels": 16}
    (source / "preprocessor_config.json").write_text(json.dumps({"melspec_kwargs": settings}))
    block = {"type": "granite_ctc", "pretrained": str(source)}
    model = slmzoo.build(slmzoo.load_card("granite-speech", preset="tiny", overrides=[f"encoder={json.dumps(block)}"]))
    assert model.encoder.feature_settings["win_length"] == 320  # read from the checkpoint, not the default 400
    audio, lengths = pad(clips(LENGTHS[:2]))
    with torch.no_grad():
        before = model.eval().encoder(audio, lengths).hidden
    model.save_pretrained(tmp_path / "saved")
    source.rename(tmp_path / "gone")
    card = yaml.safe_load((tmp_path / "saved" / "card.yaml").read_text())
    assert card["encoder"].get("pretrained") is None and card["encoder"]["feature_extractor"]["win_length"] == 320
    again = slmzoo.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.equal(again.encoder(audio, lengths).hidden, before)
