"""BEATs: Kaldi fbank, relative position buckets, gated bias, official checkpoint layout, padding, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slmzoo.builder import BuildContext
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.beats import BEATsEncoder, relative_position_bucket
from slmzoo_plugins.encoders.kaldi_fbank import fbank
from slmzoo_plugins.encoders.specs import BEATsOptions

TINY = dict(input_patch_size=16, embed_dim=24, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=40,
            encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, relative_position_embedding=True,
            num_buckets=16, max_distance=64, gru_rel_pos=True, deep_norm=True, dropout=0.0, attention_dropout=0.0)


def context(from_config=False, meta=False):
    return BuildContext(card=None, meta=meta, load_weights=not from_config)


def build(**options):
    torch.manual_seed(0)
    return BEATsEncoder(BEATsOptions(**{"config": TINY, **options}), context()).eval()


def kaldi_fbank_numpy(wave: np.ndarray, num_bins: int, window: str = "povey") -> np.ndarray:
    """Kaldi's compute-fbank-feats formulas, float64, written out directly (no dither, snip_edges)."""
    size, shift, nfft, rate = 400, 160, 512, 16000.0
    frames = np.stack([wave[i * shift: i * shift + size] for i in range(1 + (len(wave) - size) // shift)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))
    frames *= hann ** 0.85 if window == "povey" else hann
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(rate / 2)
    delta = (hi - lo) / (num_bins + 1)
    bin_mel = mel(np.arange(nfft // 2 + 1) * rate / nfft)
    banks = np.zeros((num_bins, nfft // 2 + 1))
    for m in range(num_bins):
        left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(nfft // 2):  # Kaldi's bins stop below Nyquist
            if left < bin_mel[k] < right:
                banks[m, k] = (bin_mel[k] - left) / (center - left) if bin_mel[k] <= center else \
                    (right - bin_mel[k]) / (right - center)
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


@pytest.mark.parametrize("window", ["povey", "hanning"])
def test_kaldi_fbank_matches_kaldi_formulas(window):
    wave = np.random.default_rng(0).standard_normal(4321).astype(np.float32) * 3000
    ours = fbank(torch.from_numpy(wave), num_mel_bins=128, window_type=window).numpy()
    ref = kaldi_fbank_numpy(wave, 128, window)
    assert ours.shape == ref.shape == (1 + (4321 - 400) // 160, 128)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)  # float32 vs float64 log energies


def test_kaldi_fbank_against_torchaudio():
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    wave = torch.randn(1, 8000) * 3000
    ref = kaldi.fbank(wave, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)
    torch.testing.assert_close(fbank(wave[0], num_mel_bins=128), ref, atol=1e-4, rtol=1e-4)


def test_relative_position_buckets_follow_the_published_formula():
    num_buckets, max_distance = 320, 800
    offsets = torch.arange(-1500, 1501)
    half = num_buckets // 2
    exact = half // 2

    def bucket(rel):  # T5 bidirectional buckets as BEATs writes them, on Python scalars
        base = half if rel > 0 else 0
        n = abs(rel)
        if n < exact:
            return base + n
        large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
        return base + min(large, half - 1)

    expected = torch.tensor([bucket(r) for r in offsets.tolist()])
    got = relative_position_bucket(offsets, num_buckets, max_distance)
    # float32 log vs float64 math.log may disagree exactly at a bucket edge; none does on this grid.
    assert torch.equal(got, expected)
    assert got.min() == 0 and got.max() == num_buckets - 1


def test_relative_bias_is_shared_from_layer_zero_and_gated():
    enc = build()
    layers = enc.model.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
    attn = layers[0].self_attn
    torch.nn.init.uniform_(attn.grep_a, 0.5, 2.0)
    q = torch.randn(2, 4, 5, 8)
    # gate = a * (b * grep_a - 1) + 2, a and b = sigmoid of the sums of grep_linear's two groups of 4 outputs.
    g = attn.grep_linear(q)
    a, b = torch.sigmoid(g[..., :4].sum(-1, keepdim=True)), torch.sigmoid(g[..., 4:].sum(-1, keepdim=True))
    torch.testing.assert_close(attn.gate(q), a * (b * attn.grep_a - 1.0) + 2.0)
    bias = attn.compute_bias(6)
    i, j = 1, 4
    torch.testing.assert_close(bias[:, i, j], attn.relative_attention_bias.weight[
        relative_position_bucket(torch.tensor(j - i), 16, 64)])


def test_shape_rate_and_padding_invariance():
    enc = build()
    assert enc.frame_rate == 50.0 and enc.output_dim == 32
    wave = torch.randn(3, 16000) * 0.1
    lengths = torch.tensor([16000, 9000, 5000])
    out = enc(wave, lengths)
    frames = [1 + (n - 400) // 160 for n in lengths.tolist()]
    assert out.lengths.tolist() == [f // 16 * 8 for f in frames] == [48, 24, 8]
    assert out.hidden.shape == (3, 48, 32)
    for b, n in enumerate(lengths.tolist()):
        alone = enc(wave[b: b + 1, :n], lengths[b: b + 1])
        torch.testing.assert_close(out.hidden[b, : out.lengths[b]], alone.hidden[0], atol=1e-5, rtol=1e-5)
        assert out.hidden[b, out.lengths[b]:].abs().max() == 0 if out.lengths[b] < 48 else True
    garbage = wave.clone()
    garbage[1, 9000:] = 5.0  # whatever fills the padding never matters
    torch.testing.assert_close(enc(garbage, lengths).hidden, out.hidden)


@pytest.mark.parametrize("layer", ["weighted", "all", 1])
def test_layer_selection(layer):
    out = build(layer=layer)(torch.randn(1, 4000) * 0.1, torch.tensor([4000]))
    assert out.hidden.shape == ((1, 3, 8, 32) if layer == "all" else (1, 8, 32))


def save_official(enc, path, **cfg):
    torch.save({"cfg": {**TINY, **cfg}, "model": dict(enc.model.state_dict())}, path)


def test_official_checkpoint_loads_strictly(tmp_path):
    enc = build()
    path = tmp_path / "BEATs_tiny.pt"
    save_official(enc, path)
    torch.manual_seed(1)
    loaded = BEATsEncoder(BEATsOptions(pretrained=str(path)), context()).eval()
    wave = torch.randn(1, 6000) * 0.1
    torch.testing.assert_close(loaded(wave, torch.tensor([6000])).hidden, enc(wave, torch.tensor([6000])).hidden)
    # Official names, including the weight-normed conv and the table listed under every layer.
    keys = set(enc.model.state_dict())
    assert {"encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "patch_embedding.weight",
            "post_extract_proj.weight", "encoder.layers.1.self_attn.relative_attention_bias.weight"} <= keys


def test_checkpoint_errors_name_the_keys(tmp_path):
    enc = build()
    state = dict(enc.model.state_dict())
    path = tmp_path / "bad.pt"
    torch.save({"cfg": TINY, "model": {k: v for k, v in state.items() if k != "encoder.layers.1.fc2.weight"}}, path)
    with pytest.raises(PretrainedLoadError, match=r"missing weight\(s\): encoder\.layers\.1\.fc2\.weight"):
        BEATsEncoder(BEATsOptions(pretrained=str(path)), context())
    torch.save({"cfg": TINY, "model": {**state, "encoder.extra.bias": torch.zeros(1)}}, path)
    with pytest.raises(PretrainedLoadError, match=r"unexpected weight\(s\): encoder\.extra\.bias"):
        BEATsEncoder(BEATsOptions(pretrained=str(path)), context())
    # The classifier of a fine-tuned checkpoint is a head outside the encoder: dropped; elsewhere it is unexpected.
    head = {"predictor.weight": torch.zeros(527, 32), "predictor.bias": torch.zeros(527)}
    torch.save({"cfg": {**TINY, "finetuned_model": True}, "model": {**state, **head}}, path)
    BEATsEncoder(BEATsOptions(pretrained=str(path)), context())
    torch.save({"cfg": TINY, "model": {**state, **head}}, path)
    with pytest.raises(PretrainedLoadError, match="predictor.bias"):
        BEATsEncoder(BEATsOptions(pretrained=str(path)), context())
    torch.save({"weights": state}, path)
    with pytest.raises(PretrainedLoadError, match="'cfg' and 'model'"):
        BEATsEncoder(BEATsOptions(pretrained=str(path)), context())
    with pytest.raises(PretrainedLoadError, match="unknown BEATs config field"):
        BEATsEncoder(BEATsOptions(config={**TINY, "encoder_layer": 3}), context())


def test_meta_build_counts_parameters(tmp_path):
    with torch.device("meta"):
        meta = BEATsEncoder(BEATsOptions(config=TINY), context(meta=True))
    real = build()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(meta) == count(real) and next(meta.parameters()).is_meta
    path = tmp_path / "c.pt"
    save_official(real, path)
    with torch.device("meta"):  # from the checkpoint's cfg, no weights
        assert count(BEATsEncoder(BEATsOptions(pretrained=str(path)), context(meta=True))) == count(real)


def test_bad_inputs():
    enc = build()
    with pytest.raises(ValueError, match=r"mono waveforms \[B, S\].*stereo"):
        enc(torch.zeros(1, 2, 4000), torch.tensor([4000]))
    with pytest.raises(ValueError, match="fewer than the 2800 .* for one 16-frame patch"):
        enc(torch.zeros(1, 2000), torch.tensor([2000]))
    with pytest.raises(ValueError, match=r"lengths \[5000\] exceed the 4000 samples"):
        enc(torch.zeros(1, 4000), torch.tensor([5000]))
    wave = torch.zeros(2, 4000)
    wave[1, 10] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf samples in clip\(s\) \[1\]"):
        enc(wave, torch.tensor([4000, 4000]))
