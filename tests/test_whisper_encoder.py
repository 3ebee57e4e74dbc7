"""The whisper encoder: features, parity with transformers, variable length, strict loading, layers, bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from slmzoo.builder import BuildContext
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.specs import WhisperOptions
from slmzoo_plugins.encoders.whisper import WhisperEncoder
from tests.conftest import audio_share

TINY = dict(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32)


def build(**options) -> WhisperEncoder:
    options.setdefault("config", TINY)
    return WhisperEncoder(WhisperOptions(**options), BuildContext(card=None, llm_dim=64)).eval()


def clips(*seconds: float, seed: int = 0) -> list[torch.Tensor]:
    """Noise plus a sine, one clip per duration."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, s in enumerate(seconds):
        n = int(s * 16000)
        t = torch.arange(n) / 16000
        out.append(0.1 * torch.randn(n, generator=g) + 0.5 * torch.sin(2 * torch.pi * (220 + 110 * i) * t))
    return out


def batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves])


@pytest.fixture(scope="module")
def fe() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=80)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random WhisperForConditionalGeneration saved in the native transformers format."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(folder)
    return folder, model.model.encoder


# -- features ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [80, 128])
def test_window_features_equal_feature_extractor(bins):
    waves = clips(0.5, 1.3, 3.0)
    mels, mel_lengths = build(config=dict(TINY, num_mel_bins=bins), pad_to_window=True).features(*batch(waves))
    fe = WhisperFeatureExtractor(feature_size=bins)
    ref = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt").input_features
    assert mels.shape == ref.shape == (3, bins, 3000)
    assert (mels - ref).abs().max() < 1e-5
    assert mel_lengths.tolist() == [50, 130, 300]


def test_variable_features_equal_unpadded_feature_extractor(fe):
    waves = clips(0.5, 1.3, 3.0) + [torch.randn(8075)]  # 8075 % 160 = 75: not a whole number of hops
    mels, mel_lengths = build().features(*batch(waves))
    assert mel_lengths.tolist() == [len(w) // 160 for w in waves]
    for b, w in enumerate(waves):
        ref = fe(w.numpy(), sampling_rate=16000, padding="do_not_pad", return_tensors="pt").input_features[0]
        assert ref.shape[-1] == mel_lengths[b]
        assert (mels[b, :, : mel_lengths[b]] - ref).abs().max() < 1e-5
        assert (mels[b, :, mel_lengths[b]:] == 0).all()


def test_variable_features_differ_from_window_only_on_the_last_frame():
    """Reflect vs zero padding at the clip end touches the last frame, and only when samples % 160 < 40."""
    enc = build()
    g = torch.Generator().manual_seed(1)
    for n in (8000, 8020, 8040, 8159):
        wave = torch.randn(n, generator=g)
        wave[3000:3400] *= 10  # the loudest frame is mid-clip, so the max - 8 clamp agrees too
        variable, _ = enc.features(wave[None], torch.tensor([n]))
        enc.pad_to_window = True
        window, _ = enc.features(wave[None], torch.tensor([n]))
        enc.pad_to_window = False
        diff = (variable[0] - window[0, :, : n // 160]).abs().amax(0)
        assert (diff[:-1] < 1e-5).all()
        assert bool(diff[-1] > 1e-3) == (n % 160 < 40)  # at 39 the window edge (hann ~ 0) barely differs


def test_mel_filters_are_not_in_state_dict():
    enc = build()
    assert "mel_filters" in dict(enc.named_buffers())
    assert not any("mel_filters" in k for k in enc.state_dict())


# -- parity with transformers --------------------------------------------------------------------------------
def test_pad_to_window_equals_transformers(checkpoint, fe):
    folder, reference = checkpoint
    enc = build(pretrained=str(folder), config=None, pad_to_window=True)
    waves = clips(0.5, 1.3, 3.0)
    with torch.no_grad():
        out = enc(*batch(waves))
        features = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt").input_features
        ref = reference(features).last_hidden_state
    assert out.lengths.tolist() == [25, 65, 150]
    assert out.hidden.shape == (3, 150, 16)
    for b, n in enumerate(out.lengths.tolist()):
        assert (out.hidden[b, :n] - ref[b, :n]).abs().max() < 1e-5
        assert (out.hidden[b, n:] == 0).all()


# -- 30 s windows: window_output, long_clips (Voxtral) -------------------------------------------------------------
WINDOW = 480000  # 30 s at 16 kHz


def voxtral_features(fe: WhisperFeatureExtractor, wave: torch.Tensor) -> torch.Tensor:
    """``wave [S]`` -> ``[n, n_mels, 3000]``: VoxtralProcessor's features (pad to a multiple of 30 s, log-mel over
    all of it, chunks of 3000 mel frames)."""
    mels = fe(wave.numpy(), sampling_rate=16000, padding=True, truncation=False, pad_to_multiple_of=WINDOW,
              return_tensors="pt").input_features
    return mels.reshape(mels.shape[1], -1, 3000).transpose(0, 1)


def test_split_features_equal_feature_extractor_padded_to_a_multiple_of_30_s(fe):
    waves = clips(1.3, 45.0) + [torch.randn(WINDOW) * 0.1, torch.randn(WINDOW + 1) * 0.1]
    waves[1][20 * 16000 : 21 * 16000] *= 4  # loudest in the first window: one max - 8 clamp over both windows
    enc = build(pad_to_window=True, long_clips="split")
    mels, mel_lengths = enc.features(*batch(waves))
    assert enc.windows(torch.tensor([len(w) for w in waves])).tolist() == [1, 2, 1, 2]
    assert mels.shape == (4, 80, 6000)
    assert mel_lengths.tolist() == [-(-len(w) // 160) for w in waves]
    for b, w in enumerate(waves):
        ref = voxtral_features(fe, w)
        n = ref.shape[0]
        ours = mels[b, :, : n * 3000].reshape(80, n, 3000).transpose(0, 1)
        assert (ours - ref).abs().max() < 1e-5
        assert (mels[b, :, n * 3000 :] == 0).all()
    # Why the whole clip at once: 30 s windows featurised apart differ (clamp, and STFT frames at the edge).
    apart = build(pad_to_window=True).features(*batch([waves[1][:WINDOW], waves[1][WINDOW:]]))[0]
    assert (mels[1].reshape(80, 2, 3000).transpose(0, 1) - apart).abs().max() > 1e-2


def test_window_output_split_equals_transformers_on_each_window(checkpoint, fe):
    folder, reference = checkpoint
    enc = build(pretrained=str(folder), config=None, pad_to_window=True, window_output="window", long_clips="split")
    waves = clips(1.3, 45.0)
    with torch.no_grad():
        out = enc(*batch(waves))
        refs = [reference(voxtral_features(fe, w)).last_hidden_state for w in waves]  # [n, 1500, C] per clip
    assert out.lengths.tolist() == [1500, 3000]  # every frame of every window, encoded silence included
    assert out.hidden.shape == (2, 3000, 16)
    for b, ref in enumerate(refs):
        n = int(out.lengths[b])
        assert (out.hidden[b, :n] - ref.reshape(n, 16)).abs().max() < 1e-5
        assert (out.hidden[b, n:] == 0).all()


def test_clip_output_split_keeps_the_clips_frames_of_each_window(checkpoint):
    folder, _ = checkpoint
    waves = clips(1.3, 45.0)
    audio, lengths = batch(waves)
    with torch.no_grad():
        window = build(pretrained=str(folder), config=None, pad_to_window=True, window_output="window",
                       long_clips="split")(audio, lengths)
        clip = build(pretrained=str(folder), config=None, pad_to_window=True, long_clips="split")(audio, lengths)
        stacked = build(pretrained=str(folder), config=None, pad_to_window=True, long_clips="split",
                        layer="all")(audio, lengths)
    assert clip.lengths.tolist() == [65, 1500 + 750]
    for b, n in enumerate(clip.lengths.tolist()):
        assert torch.equal(clip.hidden[b, :n], window.hidden[b, :n])
    assert stacked.hidden.shape == (2, 3, 2250, 16)  # layer: all joins the windows of every layer
    assert torch.allclose(stacked.hidden[:, -1], clip.hidden, atol=1e-6)
    assert (stacked.hidden[0, :, 65:] == 0).all()


def test_window_output_with_pool_and_mask_counts_pooled_window_frames():
    enc = build(pad_to_window=True, window_attention_mask=True, pool=2, window_output="window", long_clips="split")
    with torch.no_grad():
        out = enc(*batch(clips(1.0, 31.0)))
    assert out.lengths.tolist() == [750, 1500]
    assert torch.isfinite(out.hidden).all()


def test_default_cuts_at_30_s():
    enc = build(pad_to_window=True)
    out = enc(*batch(clips(1.0, 45.0)))
    assert out.lengths.tolist() == [50, 1500]


# -- variable length, long_clips: split (Ultravox) -------------------------------------------------------------
def test_variable_length_split_encodes_the_clips_log_mel_in_3000_frame_windows(checkpoint):
    """The clip's own log-mel (one clamp) in 3000-frame windows, each from position 0 and its own key mask; a
    clip within 30 s is encoded as plain variable length, and no clip depends on its batch. ``window_multiple``
    rounds each window of a long clip up to whole groups: zeros past a full window's 1500 frames, the tower's
    output at the last window's padded positions."""
    folder, _ = checkpoint
    waves = clips(1.3, 45.01, 31.0)  # 4501 mel frames: windows of 3000 and 1501 (751 frames); 3100: 3000 and 100
    audio, lengths = batch(waves)
    split = build(pretrained=str(folder), config=None, long_clips="split")
    aligned = build(pretrained=str(folder), config=None, long_clips="split", window_multiple=8)
    plain = build(pretrained=str(folder), config=None)
    with torch.no_grad():
        out, grouped = split(audio, lengths), aligned(audio, lengths)
        alone = [split(waves[b][None], lengths[b : b + 1]) for b in (1, 2)]
        short = plain(waves[0][None], lengths[:1])
        mels, _ = plain.features(waves[1][None], lengths[1:2])
    assert split.windows(lengths).tolist() == [1, 2, 2]
    assert out.lengths.tolist() == [65, 1500 + 751, 1500 + 50]
    assert grouped.lengths.tolist() == [65, 1504 + 752, 1504 + 56]
    for b in (1, 2):
        n = int(out.lengths[b])
        torch.testing.assert_close(out.hidden[b, :n], alone[b - 1].hidden[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden[0, :65], short.hidden[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(grouped.hidden[0, :65], out.hidden[0, :65]) and (grouped.hidden[0, 65:] == 0).all()
    with torch.no_grad():  # the first window: the first 3000 frames of the whole clip's log-mel, encoded alone
        first = split._forward_layers(mels[..., :3000], torch.tensor([3000]), torch.tensor([1500]))[-1][0]
    torch.testing.assert_close(out.hidden[1, :1500], first, atol=1e-5, rtol=1e-5)
    assert (grouped.hidden[1, 1500:1504] == 0).all()
    torch.testing.assert_close(grouped.hidden[1, 1504 : 1504 + 751], out.hidden[1, 1500:], atol=1e-6, rtol=1e-6)
    assert grouped.hidden[1, 1504 + 751].abs().sum() > 0  # a padded position's output, as Ultravox stacks it


def test_window_multiple_needs_split_and_a_matching_stack():
    from slmzoo.builder import BuildContext
    from slmzoo_plugins.adapters.specs import StackOptions
    from slmzoo_plugins.adapters.stack import StackAdapter

    with pytest.raises(ValueError, match="encoder.window_multiple: .* applies with long_clips: split"):
        build(window_multiple=8)
    context = BuildContext(card=None, llm_dim=64, encoder_dim=16)
    context.components["encoder"] = build(long_clips="split", window_multiple=8)
    with pytest.raises(ValueError, match="k 4 but encoder.window_multiple 8"):
        StackAdapter(StackOptions(k=4), context)
    assert StackAdapter(StackOptions(k=8), context).k == 8


@pytest.mark.parametrize("option", [dict(window_output="window"), dict(long_clips="windows")])
def test_window_options_need_pad_to_window(option):
    key = next(iter(option))
    with pytest.raises(ValueError, match=f"encoder.{key}: .* applies with pad_to_window: true"):
        build(**option)


def test_loads_whisper_model_and_bare_encoder(checkpoint, tmp_path):
    folder, reference = checkpoint
    WhisperModel(WhisperConfig(**TINY)).save_pretrained(tmp_path / "model")
    HFWhisperEncoder(WhisperConfig(**TINY)).save_pretrained(tmp_path / "bare")
    for source in (tmp_path / "model", tmp_path / "bare"):
        build(pretrained=str(source), config=None)
    enc = build(pretrained=str(folder), config=dict(TINY, d_model=999))  # pretrained wins over config
    assert torch.equal(enc.encoder.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("edit, name", [("drop", "layers.1.fc2.bias"), ("add", "layers.0.extra")])
def test_strict_loading_names_the_key(checkpoint, tmp_path, edit, name):
    folder, _ = checkpoint
    state = load_file(folder / "model.safetensors")
    key = "model.encoder." + name
    if edit == "drop":
        del state[key]
    else:
        state[key] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(PretrainedLoadError, match=("missing" if edit == "drop" else "unexpected") + ".*" + name):
        build(pretrained=str(tmp_path), config=None)


# -- variable length -----------------------------------------------------------------------------------------
def test_variable_length_batch_invariance():
    enc = build().double()
    waves = clips(0.5, 1.3, 3.0, 0.01 + 45 / 16000)
    audio, lengths = batch([w.double() for w in waves])
    with torch.no_grad():
        out = enc(audio, lengths)
        assert out.lengths.tolist() == [((len(w) // 160) - 1) // 2 + 1 for w in waves]
        assert out.hidden.shape == (4, 150, 16) and out.hidden.dtype == torch.float64
        for b, w in enumerate(waves):
            alone = enc(w.double()[None], torch.tensor([len(w)]))
            n = int(out.lengths[b])
            assert alone.hidden.shape[1] == n
            assert (alone.hidden[0] - out.hidden[b, :n]).abs().max() < 1e-10
            assert (out.hidden[b, n:] == 0).all()


def test_variable_length_ignores_what_the_padding_holds():
    enc = build()
    audio, lengths = batch(clips(0.5, 1.0))
    noisy = audio.clone()
    noisy[0, lengths[0]:] = 7.0
    with torch.no_grad():
        assert torch.equal(enc(audio, lengths).hidden, enc(noisy, lengths).hidden)


# -- layer selection -----------------------------------------------------------------------------------------
def test_layer_selection(checkpoint, fe):
    folder, reference = checkpoint
    waves = clips(1.0, 2.0)
    audio, lengths = batch(waves)
    features = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref_states = reference(features, output_hidden_states=True).hidden_states
        picked = build(pretrained=str(folder), config=None, pad_to_window=True, layer=1)(audio, lengths)
        for b, n in enumerate(picked.lengths.tolist()):
            assert (picked.hidden[b, :n] - ref_states[1][b, :n]).abs().max() < 1e-5

        stacked = build(pretrained=str(folder), config=None, layer="all")
        assert stacked.stacks_layers
        all_out = stacked(audio, lengths)
        assert all_out.hidden.shape == (2, 3, 100, 16)
        assert (all_out.hidden[0, :, 50:] == 0).all()
        last = build(pretrained=str(folder), config=None)(audio, lengths)
        assert torch.allclose(all_out.hidden[:, -1], last.hidden, atol=1e-6)

        weighted = build(pretrained=str(folder), config=None, layer="weighted")(audio, lengths)
        assert torch.allclose(weighted.hidden, all_out.hidden.mean(1), atol=1e-6)


def test_layer_two_equals_transformers_hidden_states_in_window_mode(fe):
    config = dict(TINY, encoder_layers=3)
    enc = build(config=config, pad_to_window=True, layer=2)
    waves = clips(0.7)
    features = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = enc.encoder(features, output_hidden_states=True).hidden_states
        out = enc(*batch(waves))
    assert len(ref) == 4
    assert (out.hidden[0] - ref[2][0, : out.lengths[0]]).abs().max() < 1e-5


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("empty", r"clips \[1\] have \[0\] samples"),
    ("short", r"clips \[1\] have \[100\] samples, fewer than the 201"),
    ("nan", r"NaN or inf samples in clip\(s\) \[1\]"),
    ("inf", r"NaN or inf samples in clip\(s\) \[1\]"),
    ("stereo", "mono"),
    ("long", "clip 1 is 31.00 s long.*long_clips: split"),
])
def test_bad_input(case, message):
    enc = build()
    audio, lengths = torch.zeros(2, 16000), torch.tensor([16000, 16000])
    if case == "empty":
        lengths[1] = 0
    elif case == "short":
        lengths[1] = 100
    elif case in ("nan", "inf"):
        audio[1, 500] = float("nan") if case == "nan" else float("inf")
    elif case == "stereo":
        audio = torch.zeros(2, 2, 16000)
    elif case == "long":
        audio, lengths = torch.zeros(2, 31 * 16000), torch.tensor([16000, 31 * 16000])
    with pytest.raises(ValueError, match=message):
        enc(audio, lengths)


def test_silence_is_finite():
    for pad_to_window in (False, True):
        out = build(pad_to_window=pad_to_window)(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
        assert torch.isfinite(out.hidden).all()


def test_half_precision_weights():
    enc = build().to(torch.bfloat16)
    out = enc(*batch(clips(0.5, 1.0)))
    assert out.hidden.dtype == torch.bfloat16 and torch.isfinite(out.hidden.float()).all()


# -- build ---------------------------------------------------------------------------------------------------
def test_meta_build_counts_parameters():
    config = dict(TINY, d_model=64, encoder_layers=3, encoder_ffn_dim=128)
    with torch.device("meta"):
        enc = WhisperEncoder(WhisperOptions(config=config, pretrained="no/such-repo"),
                             BuildContext(card=None, meta=True))
    assert all(p.is_meta for p in enc.parameters())
    expected = sum(p.numel() for p in HFWhisperEncoder(WhisperConfig(**config)).parameters())
    assert sum(p.numel() for p in enc.parameters()) == expected
    assert (enc.output_dim, enc.frame_rate, enc.sampling_rate, enc.num_layers) == (64, 50.0, 16000, 3)


def test_meta_build_without_config_offline_says_add_config():
    with pytest.raises(PretrainedLoadError, match="inline encoder.config"):
        with torch.device("meta"):
            WhisperEncoder(WhisperOptions(pretrained="/no/such/folder"), BuildContext(card=None, meta=True))


def test_a_checkpoint_without_a_whisper_tower_is_named(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=32, vocab_size=64)).save_pretrained(tmp_path / "lm")
    with pytest.raises(PretrainedLoadError, match="Qwen2Config checkpoint, neither Whisper nor an audio LLM"):
        WhisperEncoder(WhisperOptions(pretrained=str(tmp_path / "lm")), BuildContext(card=None))


def test_random_whisper_starts_with_the_audio_in_its_output():
    """From random weights the conv stem gets He init, so the audio is not drowned by the sinusoidal positions added
    after it: transformers' std-0.02 init leaves the output of a 96-wide encoder ~2% dependent on the clip (a model
    trained from scratch then learns only the text). Loading weights is unaffected."""
    config = dict(TINY, d_model=96, encoder_attention_heads=4, encoder_ffn_dim=384)
    waves = [w[:16000] for w in clips(*[1.0] * 6, seed=3)]
    waves = [w * (1 + i) / 3 for i, w in enumerate(waves)]  # loudness differs too
    audio, lengths = batch(waves)
    torch.manual_seed(0)
    ours = build(config=config)
    reference = HFWhisperEncoder(WhisperConfig(**config)).eval()  # transformers' own init
    with torch.no_grad():
        mels = build(config=config, pad_to_window=True).features(audio, lengths)[0]  # [B, 80, 3000]
        ours_share = audio_share(ours(audio, lengths).hidden)
        reference_share = audio_share(reference(mels).last_hidden_state[:, :50])
    assert ours_share > 0.1 and reference_share < ours_share / 4, (ours_share, reference_share)
