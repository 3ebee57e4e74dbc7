"""hubert / wavlm / wav2vec2: tiny random checkpoints saved with save_pretrained, checked against transformers'
own feature extractor + model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from slmzoo.builder import BuildContext
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.specs import SSLOptions
from slmzoo_plugins.encoders.ssl import HubertEncoder, Wav2Vec2Encoder, WavLMEncoder

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 2), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
            vocab_size=12, feat_extract_norm="layer", do_stable_layer_norm=True, layerdrop=0.0)
GROUP = dict(TINY, feat_extract_norm="group", do_stable_layer_norm=False)
ENCODERS = {  # name: (plugin, config, base model, task model whose checkpoint the encoder must also load)
    "hubert": (HubertEncoder, tf.HubertConfig, tf.HubertModel, tf.HubertForCTC),
    "wavlm": (WavLMEncoder, tf.WavLMConfig, tf.WavLMModel, tf.WavLMForCTC),
    "wav2vec2": (Wav2Vec2Encoder, tf.Wav2Vec2Config, tf.Wav2Vec2Model, tf.Wav2Vec2ForCTC),
}
LENGTHS = [4000, 2600, 1234]


pytestmark = pytest.mark.usefixtures("one_thread")


def clips(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) * 0.1 + 0.05 for n in LENGTHS]


def pad(waves):
    audio = torch.zeros(len(waves), max(len(w) for w in waves))
    for i, wave in enumerate(waves):
        audio[i, : len(wave)] = wave
    return audio, torch.tensor([len(w) for w in waves])


@pytest.fixture(scope="module", params=list(ENCODERS))
def checkpoint(request, tmp_path_factory):
    """A task checkpoint (``*ForCTC``, heads and all) plus its feature extractor, as a hub repo would hold."""
    name = request.param
    plugin, config_class, model_class, task_class = ENCODERS[name]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(name)
    task_class(config_class(**TINY)).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    reference = model_class.from_pretrained(folder).eval()
    return SimpleNamespace(name=name, folder=str(folder), plugin=plugin, reference=reference,
                           config_class=config_class, model_class=model_class)


def test_matches_reference_feature_extractor_and_model(checkpoint):
    encoder = checkpoint.plugin(SSLOptions(pretrained=checkpoint.folder)).eval()
    assert (encoder.output_dim, encoder.frame_rate, encoder.num_layers, encoder.normalize) == (32, 800.0, 2, True)
    waves = clips()
    extractor = tf.Wav2Vec2FeatureExtractor.from_pretrained(checkpoint.folder)
    inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = checkpoint.reference(**inputs).last_hidden_state
        out = encoder(*pad(waves))
    frames = checkpoint.reference._get_feat_extract_output_lengths(torch.tensor(LENGTHS))
    assert out.lengths.tolist() == frames.tolist()
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(out.hidden[i, :n], expected[i, :n], atol=1e-5, rtol=0)
        assert out.hidden[i, n:].abs().max() == 0 if n < out.hidden.shape[1] else True


@pytest.mark.parametrize("name", list(ENCODERS))
def test_group_norm_runs_conv_per_clip(name, tmp_path):
    """hubert-base style: GroupNorm over time, no attention mask in the original. Each clip in a batch equals the
    original run on that clip alone (unpadded), which is what the original is right about."""
    plugin, config_class, model_class, _ = ENCODERS[name]
    torch.manual_seed(0)
    model_class(config_class(**GROUP)).save_pretrained(tmp_path)
    reference = model_class.from_pretrained(tmp_path).eval()
    encoder = plugin(SSLOptions(pretrained=str(tmp_path), normalize=False)).eval()
    waves = clips(2)
    with torch.no_grad():
        out = encoder(*pad(waves))
        for i, wave in enumerate(waves):
            expected = reference(wave[None]).last_hidden_state[0]
            torch.testing.assert_close(out.hidden[i, : len(expected)], expected, atol=1e-5, rtol=0)
        batched_reference = reference(pad(waves)[0]).last_hidden_state  # padding leaks through GroupNorm there
    assert (batched_reference[2, : out.lengths[2]] - out.hidden[2, : out.lengths[2]]).abs().max() > 1e-3


def test_int_layer_is_reference_hidden_state(checkpoint):
    wave = clips()[0]
    inputs = tf.Wav2Vec2FeatureExtractor.from_pretrained(checkpoint.folder)(wave.numpy(), sampling_rate=16000,
                                                                             return_tensors="pt")
    with torch.no_grad():
        expected = checkpoint.reference(**inputs, output_hidden_states=True).hidden_states
        for layer in (0, 1, 2, -1):
            encoder = checkpoint.plugin(SSLOptions(pretrained=checkpoint.folder, layer=layer)).eval()
            out = encoder(wave[None], torch.tensor([len(wave)]))
            torch.testing.assert_close(out.hidden, expected[layer], atol=1e-5, rtol=0)


def test_all_layers_stack(checkpoint):
    encoder = checkpoint.plugin(SSLOptions(pretrained=checkpoint.folder, layer="all"))
    assert encoder.stacks_layers
    out = encoder(*pad(clips()))
    assert out.hidden.shape[:3] == (3, 3, int(out.lengths.max()))


def tamper(source, target, drop=None, add=None):
    """Copy a saved checkpoint with one tensor dropped and/or one added."""
    import shutil

    shutil.copytree(source, target)
    tensors = load_file(f"{target}/model.safetensors")
    if drop:
        tensors.pop(drop)
    if add:
        tensors[add] = torch.zeros(3)
    save_file(tensors, f"{target}/model.safetensors", metadata={"format": "pt"})
    return str(target)


def test_strict_loading_names_missing_and_unexpected(checkpoint, tmp_path):
    prefix = checkpoint.model_class.base_model_prefix
    folder = tamper(checkpoint.folder, tmp_path / "bad", drop=f"{prefix}.encoder.layers.1.attention.k_proj.weight",
                    add=f"{prefix}.encoder.bogus.weight")
    with pytest.raises(PretrainedLoadError) as error:
        checkpoint.plugin(SSLOptions(pretrained=folder))
    message = str(error.value)
    assert "missing weight encoder.layers.1.attention.k_proj.weight" in message
    assert "bogus.weight" in message and "lm_head" not in message  # a task checkpoint's head is not the encoder's


def test_strict_loading_bare_checkpoint(checkpoint, tmp_path):
    checkpoint.reference.save_pretrained(tmp_path / "bare")
    folder = tamper(tmp_path / "bare", tmp_path / "bad", add="lm_head.weight")
    with pytest.raises(PretrainedLoadError, match="unexpected weight lm_head.weight"):
        checkpoint.plugin(SSLOptions(pretrained=folder))


def test_meta_build_counts_parameters(checkpoint):
    expected = sum(p.numel() for p in checkpoint.reference.parameters())
    context = BuildContext(card=None, meta=True)
    for options in (SSLOptions(pretrained=checkpoint.folder), SSLOptions(config=TINY)):
        with torch.device("meta"):
            encoder = checkpoint.plugin(options, context)
        assert all(p.is_meta for p in encoder.parameters())
        assert sum(p.numel() for p in encoder.parameters()) == expected
    # A card's pretrained hub id with the published dimensions inline: --meta builds offline, downloading nothing.
    with torch.device("meta"):
        encoder = checkpoint.plugin(SSLOptions(pretrained="no-such-org/no-such-model", config=TINY), context)
    assert sum(p.numel() for p in encoder.parameters()) == expected


def test_inline_config_and_overrides(checkpoint):
    encoder = checkpoint.plugin(SSLOptions(config=TINY, normalize=False))
    assert not encoder.normalize and encoder.model.config.hidden_size == 32
    encoder = checkpoint.plugin(SSLOptions(pretrained=checkpoint.folder, config={"apply_spec_augment": False}))
    assert encoder.model.config.apply_spec_augment is False
    with pytest.raises(PretrainedLoadError, match="shape mismatch"):
        checkpoint.plugin(SSLOptions(pretrained=checkpoint.folder, config={"intermediate_size": 48}))


def test_bad_input():
    encoder = HubertEncoder(SSLOptions(config=TINY)).eval()
    assert encoder.min_samples == 10 + 5 * (3 - 1) + 10 * (2 - 1)  # receptive field of the tiny conv stack
    good = torch.randn(2, 1000)
    cases = {
        "fewer than the 30": (good, torch.tensor([1000, 0])),  # empty clip
        "clips \\[1\\] have \\[29\\]": (good, torch.tensor([1000, 29])),
        "NaN or inf": (good.index_put((torch.tensor([0]), torch.tensor([5])), torch.tensor(float("nan"))),
                       torch.tensor([1000, 1000])),
        "stereo": (torch.randn(2, 2, 1000), torch.tensor([1000, 1000])),
        "exceed": (good, torch.tensor([1000, 1001])),
    }
    for message, (audio, lengths) in cases.items():
        with pytest.raises(ValueError, match=message):
            encoder(audio, lengths)
    with torch.no_grad():
        silence = encoder(torch.zeros(2, 1000), torch.tensor([1000, 30]))
    assert torch.isfinite(silence.hidden).all() and silence.lengths.tolist() == [49, 1]
