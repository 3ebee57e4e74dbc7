"""AST and CLAP: our torch features + model == transformers' feature extractor + model; strict loading; meta builds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from slmzoo.builder import BuildContext
from slmzoo_plugins.encoders.hf_loading import PretrainedLoadError
from slmzoo_plugins.encoders.specs import ASTOptions, ClapOptions

AST_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, num_mel_bins=32,
                  max_length=100, patch_size=16, frequency_stride=8, time_stride=10)
CLAP_AUDIO = dict(spec_size=64, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2], window_size=4,
                  num_mel_bins=16, hidden_size=32, projection_dim=8)
CLAP_FE = dict(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=400,
               frequency_min=50, frequency_max=8000)


def context(meta=False):
    return BuildContext(card=None, meta=meta)


def count(module):
    return sum(p.numel() for p in module.parameters())


def tamper(folder, drop=None, add=None):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state.pop(drop, None)
    state.update(add or {})
    save_file(state, str(path), metadata={"format": "pt"})


# -- AST ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ast")
    ASTModel(ASTConfig(**AST_CONFIG)).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=100, mean=-3.0, std=4.0).save_pretrained(folder)
    return folder


def ast_encoder(folder, **options):
    from slmzoo_plugins.encoders.ast import ASTEncoder

    return ASTEncoder(ASTOptions(pretrained=str(folder), **options), context()).eval()


def test_ast_equals_feature_extractor_plus_model(ast_folder):
    from transformers import ASTFeatureExtractor, ASTModel

    enc = ast_encoder(ast_folder)
    wave, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000])  # the first is cut to 1 s (100 frames)
    out = enc(wave, lengths)
    fe = ASTFeatureExtractor.from_pretrained(ast_folder)  # numpy path (no torchaudio): float64 STFT inside
    ref_in = fe([wave[0].numpy(), wave[1, :9000].numpy()], sampling_rate=16000, return_tensors="pt").input_values
    feats, frames = enc.features(wave, lengths)
    torch.testing.assert_close(feats, ref_in, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        ref = ASTModel.from_pretrained(ast_folder).eval()(ref_in).last_hidden_state
    f, t = enc.freq_patches, enc.time_patches
    assert (f, t) == (3, 9) and enc.frame_rate == 30.0
    ref = ref[:, 2:].unflatten(1, (f, t)).transpose(1, 2).flatten(1, 2)  # frequency-major -> time-major
    assert out.lengths.tolist() == [9 * 3, 6 * 3]  # 9000 samples: 54 frames; patches start at 0, 10, .., 50
    for b in range(2):
        n = out.lengths[b]
        torch.testing.assert_close(out.hidden[b, :n], ref[b, :n], atol=1e-4, rtol=1e-4)


def test_ast_lengths_modes_and_padding(ast_folder):
    enc = ast_encoder(ast_folder, output="frames")
    wave, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 4000])
    out = enc(wave, lengths)
    # 4000 samples -> 23 frames -> time patches starting at 0, 10, 20 cover the clip.
    assert out.hidden.shape == (2, 9, 32) and out.lengths.tolist() == [9, 3] and enc.frame_rate == 10.0
    alone = enc(wave[1:, :4000], lengths[1:])
    torch.testing.assert_close(out.hidden[1, :3], alone.hidden[0, :3], atol=1e-5, rtol=1e-5)
    assert out.hidden[1, 3:].abs().max() == 0
    pooled = ast_encoder(ast_folder, output="pooled")(wave, lengths)
    assert pooled.hidden.shape == (2, 1, 32) and pooled.lengths.tolist() == [1, 1]
    stacked = ast_encoder(ast_folder, layer="all")(wave, lengths)
    assert stacked.hidden.shape == (2, 3, 27, 32)


def test_ast_strict_loading_and_task_checkpoint(ast_folder, tmp_path):
    import shutil

    from transformers import ASTConfig, ASTForAudioClassification

    bad = tmp_path / "bad"
    shutil.copytree(ast_folder, bad)
    tamper(bad, drop="encoder.layer.1.output.dense.weight")
    # transformers names the key in its own (converted) layout
    with pytest.raises(PretrainedLoadError, match=r"missing weight (encoder\.layer\.1\.output\.dense|layers\.1\.mlp\.fc2)"):
        ast_encoder(bad)
    task = tmp_path / "task"
    ASTForAudioClassification(ASTConfig(**AST_CONFIG, num_labels=5)).save_pretrained(task)
    assert ast_encoder(task).output_dim == 32  # the classifier head is dropped, everything else is strict


def test_ast_meta_build(ast_folder):
    from slmzoo_plugins.encoders.ast import ASTEncoder

    with torch.device("meta"):
        meta = ASTEncoder(ASTOptions(config=AST_CONFIG), context(meta=True))
    assert next(meta.parameters()).is_meta and count(meta) == count(ast_encoder(ast_folder))


def test_ast_bad_inputs(ast_folder):
    enc = ast_encoder(ast_folder)
    with pytest.raises(ValueError, match=r"clips \[0\] have \[300\] samples, fewer than the 400 .* fbank frame"):
        enc(torch.zeros(1, 300), torch.tensor([300]))
    with pytest.raises(ValueError, match=r"lengths \[1\] do not match a batch of 2 clips"):
        enc(torch.zeros(2, 1000), torch.tensor([1000]))


# -- CLAP --------------------------------------------------------------------------------------------------------------
def clap_folder(root, fusion):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    folder = root / f"clap_{fusion}"
    text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                projection_dim=8)
    ClapModel(ClapConfig(audio_config={**CLAP_AUDIO, "enable_fusion": fusion}, text_config=text,
                         projection_dim=8)).save_pretrained(folder)
    ClapFeatureExtractor(**CLAP_FE, truncation="fusion" if fusion else "rand_trunc").save_pretrained(folder)
    return folder


def clap_encoder(folder, **options):
    from slmzoo_plugins.encoders.clap import ClapEncoder

    return ClapEncoder(ClapOptions(pretrained=str(folder), **options), context()).eval()


@pytest.mark.parametrize("fusion", [False, True])
def test_clap_equals_feature_extractor_plus_model(tmp_path, fusion):
    from transformers import ClapFeatureExtractor, ClapModel

    folder = clap_folder(tmp_path, fusion)
    enc = clap_encoder(folder)
    assert enc.sampling_rate == 16000 and enc.frame_rate == 64.0  # 32 time x 2 frequency steps per 1 s window
    wave, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 7000])
    out = enc(wave, lengths)
    fe = ClapFeatureExtractor.from_pretrained(folder)
    ref_in = fe([wave[0].numpy(), wave[1, :7000].numpy()], sampling_rate=16000, return_tensors="pt")
    feats, is_longer = enc.features(wave, lengths)
    torch.testing.assert_close(feats, ref_in.input_features.float(), atol=1e-4, rtol=1e-5)  # float64 numpy STFT
    assert not is_longer.any()  # the extractor flags a random clip in fusion mode; we never draw
    with torch.no_grad():
        ref = ClapModel.from_pretrained(folder).eval().audio_model(
            ref_in.input_features.float(), is_longer=torch.zeros(2, 1, dtype=torch.bool)).last_hidden_state
    B, C, f, t = ref.shape
    ref = ref.permute(0, 3, 2, 1).reshape(B, t * f, C)
    assert out.lengths.tolist() == [64, 2 * 14]  # 7000 / 16000 * 32 = 14 time steps
    for b in range(2):
        n = out.lengths[b]
        torch.testing.assert_close(out.hidden[b, :n], ref[b, :n], atol=1e-4, rtol=1e-4)
    pooled = clap_encoder(folder, output="pooled")(wave, lengths)
    assert pooled.hidden.shape == (2, 1, 32)


def test_clap_long_clip_is_cut_deterministically(tmp_path):
    enc = clap_encoder(clap_folder(tmp_path, False))
    wave = torch.randn(1, 24000) * 0.1
    feats, is_longer = enc.features(wave, torch.tensor([24000]))
    torch.testing.assert_close(feats[0, 0], enc.log_mel(wave[0, :16000]))
    assert is_longer.all()


def test_clap_strict_loading(tmp_path):
    folder = clap_folder(tmp_path, False)
    tamper(folder, drop="audio_model.audio_encoder.norm.weight", add={"audio_model.audio_encoder.extra": torch.zeros(1)})
    with pytest.raises(PretrainedLoadError, match="missing weight audio_encoder.norm.weight; unexpected weight "
                                                  "audio_encoder.extra"):
        clap_encoder(folder)
    with pytest.raises(ValueError, match="only 'last'"):
        clap_encoder(folder, layer="weighted")


def test_clap_meta_build(tmp_path):
    from slmzoo_plugins.encoders.clap import ClapEncoder

    folder = clap_folder(tmp_path, False)
    with torch.device("meta"):
        meta = ClapEncoder(ClapOptions(pretrained=str(folder)), context(meta=True))
    assert next(meta.parameters()).is_meta and count(meta) == count(clap_encoder(folder))


def random_clap(**feature_extractor):
    from slmzoo_plugins.encoders.clap import ClapEncoder

    torch.manual_seed(0)
    config = {**CLAP_AUDIO, "hidden_dropout_prob": 0.0}
    return ClapEncoder(ClapOptions(config=config, feature_extractor={**CLAP_FE, **feature_extractor}), context())


def test_clap_normalised_features_never_depend_on_the_batch():
    """``normalize: all_features``: each clip's log-mel by its own mean and std, and the input BatchNorm on its
    running statistics in training too. CLAP's own batch statistics make a clip's output depend on its batch
    (a tiny CLAP trained from scratch under augmentation stayed on the text prior with them)."""
    wave = torch.randn(2, 16000) * 0.1
    wave[1] *= torch.linspace(0, 3, 16000)  # another level and envelope: other batch statistics
    lengths = torch.tensor([16000, 9000])
    normalised, plain = random_clap(normalize="all_features").train(), random_clap().train()
    feats, _ = normalised.features(wave, lengths)
    own = feats[1, 0, : 1 + 9000 // 160]
    assert abs(own.mean().item()) < 1e-4 and own.std().item() == pytest.approx(1.0, abs=1e-3)
    for encoder, independent in ((normalised, True), (plain, False)):
        with torch.no_grad():
            alone = encoder(wave[:1], lengths[:1]).hidden[0]
            batched = encoder(wave, lengths).hidden[0]
        assert torch.allclose(alone, batched, atol=1e-5) == independent
    batch_norm = normalised.model.audio_encoder.batch_norm
    assert not batch_norm.training and batch_norm.running_mean.abs().max() == 0  # never updated
    with pytest.raises(ValueError, match="normalize"):
        ClapOptions(feature_extractor={**CLAP_FE, "normalize": "per_feature"})
