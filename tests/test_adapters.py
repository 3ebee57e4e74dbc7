"""Adapters: shapes and lengths, the padding invariant, gradients, meta builds, and each adapter's own logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slmzoo.builder import BuildContext
from slmzoo.plugins import registry
from slmzoo_plugins.adapters import specs
from tests.conftest import audio_share

C, D, RATE = 32, 48, 50.0
LENGTHS = [23, 11]  # a long clip and the short clip whose invariance is checked

TINY = {
    "linear": specs.LinearOptions(),
    "mlp": specs.MLPOptions(hidden_dim=24),
    "audio_transformer": specs.AudioTransformerOptions(num_layers=2, num_heads=4, ff_dim=64),
    "conv": specs.ConvOptions(stride=4, layers=2, hidden_dim=24),
    "avgpool": specs.AvgPoolOptions(),
    "qformer": specs.QFormerOptions(num_queries=4, hidden_size=16, num_heads=2, intermediate_size=32),
    "window_qformer": specs.WindowQFormerOptions(window=5, num_queries=2, hidden_size=16, num_heads=2,
                                                 intermediate_size=32),
    "conformer_adapter": specs.ConformerAdapterOptions(num_heads=4, ff_expansion=2, conv_kernel=5),
    "ctc_compress": specs.CTCCompressOptions(vocab_size=4, num_layers=2, num_heads=4, ff_dim=64),
    "tltr": specs.TLTROptions(pool=4, hidden_dim=16, time_heads=2, layer_heads=4),
    "discrete_units": specs.DiscreteUnitsOptions(num_units=8),
}
# Expected lengths for LENGTHS when they do not depend on the data
EXPECTED_LENGTHS = {
    "linear": [23, 11], "mlp": [23, 11], "conformer_adapter": [23, 11], "audio_transformer": [23, 11],
    "conv": [6, 3],  # two convs k3 s2 p1: (n - 1) // 2 + 1 twice
    "avgpool": [11, 5],  # floor, as AvgPool1d and Qwen2-Audio
    "qformer": [4, 4],
    "window_qformer": [10, 6],  # ceil(n / 5) windows x 2 queries
    "tltr": [6, 3],  # ceil(n / 4)
}
RATES = {"linear": 50.0, "mlp": 50.0, "audio_transformer": 50.0, "conformer_adapter": 50.0, "conv": 12.5, "avgpool": 25.0, "qformer": None,
         "window_qformer": 20.0, "tltr": 12.5, "ctc_compress": None, "discrete_units": None}
TRAINABLE = [name for name in TINY if name != "discrete_units"]


def context(name: str = "", **overrides) -> BuildContext:
    overrides.setdefault("encoder_layers_stacked", name == "tltr")
    return BuildContext(card=None, encoder_dim=C, encoder_frame_rate=RATE, llm_dim=D, **overrides)


def build(name: str, options=None, **overrides):
    factory = registry().get("adapter", name).load_factory()
    return factory(options or TINY[name], context(name, **overrides))


def frames(name: str, lengths: list[int], dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Random encoder output with random garbage (not zeros) in the padding: ``[B, T, C]`` or ``[B, 3, T, C]``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (len(lengths), 3, max(lengths), C) if name == "tltr" else (len(lengths), max(lengths), C)
    return torch.randn(shape, generator=generator, dtype=dtype)


def clip(hidden: torch.Tensor, i: int, n: int) -> torch.Tensor:
    return hidden[i : i + 1, ..., :n, :]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_all_adapters_are_registered():
    assert set(TINY) | {"stack"} <= set(registry().names("adapter"))


@pytest.mark.parametrize("name", list(TINY))
def test_shapes_lengths_and_rate(name):
    adapter = build(name).eval()
    out = adapter(frames(name, LENGTHS, torch.float32), torch.tensor(LENGTHS))
    if name in EXPECTED_LENGTHS:
        assert out.lengths.tolist() == EXPECTED_LENGTHS[name]
    result = out.units if name == "discrete_units" else out.embeds
    assert result.shape[:2] == (2, int(out.lengths.max()))
    if name != "discrete_units":
        assert out.embeds.shape[-1] == D == adapter.output_dim
    assert adapter.output_frame_rate(RATE) == RATES[name]


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradients_reach_every_parameter(name):
    options = TINY[name].model_copy(update={"dropout": 0.0}) if "dropout" in type(TINY[name]).model_fields else None
    adapter = build(name, options).train()
    out = adapter(frames(name, LENGTHS, torch.float32), torch.tensor(LENGTHS))
    loss = out.embeds.pow(2).sum()
    if name == "ctc_compress":
        loss = loss + adapter.ctc_loss(torch.tensor([[1, 2, 3], [3, 1, 0]]), torch.tensor([3, 2]))
    loss.backward()
    missing = [n for n, p in adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_frame_adapters_refuse_stacked_layers():
    with pytest.raises(ValueError, match="layer: all"):
        registry().get("adapter", "linear").load_factory()(TINY["linear"], context(encoder_layers_stacked=True))
    with pytest.raises(ValueError, match="layer: all"):
        registry().get("adapter", "tltr").load_factory()(TINY["tltr"], context(encoder_layers_stacked=False))
    with pytest.raises(ValueError, match=r"\[B, L, T, C\]"):
        build("tltr")(torch.zeros(1, 8, C), torch.tensor([8]))


# -- audio_transformer ----------------------------------------------------------------------------------------------
def test_audio_transformer_tells_the_frames_apart_by_position():
    """Audio Flamingo's transformation: with the sinusoidal positions, reversing the frames changes each frame's
    output (a cross-attention fusion learns the order from them); without positions the layers are permutation
    equivariant, so the memory would be an unordered set."""
    from slmzoo_plugins.adapters.blocks import sinusoidal_positions

    hidden, lengths = frames("audio_transformer", [12], torch.float64), torch.tensor([12])
    for position, equivariant in (("sinusoidal", False), ("none", True)):
        options = specs.AudioTransformerOptions(num_layers=2, num_heads=4, ff_dim=64, position=position)
        adapter = build("audio_transformer", options).double().eval()
        forward = adapter(hidden, lengths).embeds
        backward = adapter(hidden.flip(1), lengths).embeds.flip(1)
        assert torch.allclose(forward, backward, atol=1e-9) == equivariant, position
    table = sinusoidal_positions(50, 8)
    assert torch.allclose(table[:, 0], torch.sin(torch.arange(50.0))) and torch.allclose(table[0, 1::2], torch.ones(4))
    assert torch.allclose(table[7, 2], torch.sin(torch.tensor(7.0 / 10000 ** (2 / 8))))


# -- conv, avgpool --------------------------------------------------------------------------------------------------
def test_conv_splits_the_total_stride():
    from slmzoo_plugins.adapters.conv import split_stride

    assert split_stride(4, 2) == [2, 2]
    assert split_stride(12, 2) == [4, 3]
    assert split_stride(5, 2) == [5, 1]
    assert split_stride(8, 3) == [2, 2, 2]


def test_avgpool_matches_qwen2_audio_on_an_odd_clip():
    """Qwen2-Audio: AvgPool1d(2, 2) at the encoder end, its layer_norm, then the projector's Linear."""
    adapter = build("avgpool").double()
    hidden = frames("avgpool", [11])
    out = adapter(hidden, torch.tensor([11]))
    pooled = nn.AvgPool1d(2, stride=2)(hidden.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out.embeds, adapter.linear(adapter.layer_norm(pooled)))
    assert out.lengths.tolist() == [5]

    keep = build("avgpool", specs.AvgPoolOptions(keep_partial=True)).double()
    keep.load_state_dict(adapter.state_dict())
    out = keep(hidden, torch.tensor([11]))
    assert out.lengths.tolist() == [6]
    torch.testing.assert_close(out.embeds[0, 5], keep.linear(keep.layer_norm(hidden[0, 10])))


# -- Q-Formers ------------------------------------------------------------------------------------------------------
def test_qformer_is_blip2_qformer_with_learned_queries():
    from transformers import Blip2QFormerModel

    adapter = build("qformer").double().eval()
    assert isinstance(adapter.qformer, Blip2QFormerModel)
    hidden = frames("qformer", [23])
    out = adapter(hidden, torch.tensor([23]))
    reference = adapter.qformer(query_embeds=adapter.query, encoder_hidden_states=hidden).last_hidden_state
    torch.testing.assert_close(out.embeds, adapter.linear(reference))
    # the mask matters: padding garbage would change the queries' output if it were attended to
    unmasked = adapter.qformer(query_embeds=adapter.query.expand(2, -1, -1),
                               encoder_hidden_states=frames("qformer", LENGTHS)).last_hidden_state
    masked = adapter(frames("qformer", LENGTHS), torch.tensor(LENGTHS)).embeds
    assert not torch.allclose(adapter.linear(unmasked[1]), masked[1])


def test_window_qformer_runs_blip2_qformer_per_window():
    from transformers import Blip2QFormerModel

    adapter = build("window_qformer").double().eval()
    assert isinstance(adapter.qformer, Blip2QFormerModel)
    hidden = frames("window_qformer", [13])  # windows of 5: [0, 5), [5, 10), and [10, 13) partial
    out = adapter(hidden, torch.tensor([13]))
    assert out.lengths.tolist() == [6]
    pieces = [hidden[:, 0:5], hidden[:, 5:10], hidden[:, 10:13]]  # the partial window unpadded
    reference = torch.cat([adapter.qformer(query_embeds=adapter.query, encoder_hidden_states=piece).last_hidden_state
                           for piece in pieces], dim=1)
    torch.testing.assert_close(out.embeds, adapter.linear(reference))


def test_window_qformer_overlapping_windows():
    options = TINY["window_qformer"].model_copy(update={"window": 6, "stride": 3, "num_queries": 1})
    adapter = build("window_qformer", options).double().eval()
    assert adapter.output_frame_rate(RATE) == RATE / 3
    hidden = frames("window_qformer", [10])
    out = adapter(hidden, torch.tensor([10]))
    assert out.lengths.tolist() == [4]  # windows start at 0, 3, 6, 9
    last = adapter.qformer(query_embeds=adapter.query, encoder_hidden_states=hidden[:, 9:10]).last_hidden_state
    torch.testing.assert_close(out.embeds[:, 3:], adapter.linear(last))


def test_window_qformer_zeros_is_granite_speech_projector():
    """last_window: zeros is transformers' GraniteSpeechEncoderProjector (same parameter names), clip by clip in a
    padded batch: the last window zero-padded and attended to, window // num_queries the downsample rate."""
    from transformers import GraniteSpeechConfig
    from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechEncoderProjector

    options = TINY["window_qformer"].model_copy(update={"window": 6, "num_queries": 2, "last_window": "zeros"})
    adapter = build("window_qformer", options).double().eval()
    reference = GraniteSpeechEncoderProjector(GraniteSpeechConfig(
        projector_config=adapter.qformer.config.to_dict(), text_config={"model_type": "granite", "hidden_size": D},
        window_size=6, downsample_rate=3)).double().eval()
    reference.load_state_dict(adapter.state_dict(), strict=True)
    hidden, lengths = frames("window_qformer", LENGTHS), torch.tensor(LENGTHS)  # garbage in the padding
    out = adapter(hidden, lengths)
    assert out.lengths.tolist() == [8, 4]  # ceil(23 / 6) and ceil(11 / 6) windows, 2 queries each
    for i, n in enumerate(LENGTHS):
        expected = reference(clip(hidden, i, n))[0]
        torch.testing.assert_close(out.embeds[i, : len(expected)], expected)
        assert (out.embeds[i, len(expected):] == 0).all()
    # the default masks the missing frames instead: the partial window's queries then differ
    masked = build("window_qformer", options.model_copy(update={"last_window": "mask"})).double().eval()
    masked.load_state_dict(adapter.state_dict())
    alone = masked(clip(hidden, 1, 11), lengths[1:]).embeds[0]
    torch.testing.assert_close(alone[:2], out.embeds[1, :2])  # a whole window: the same
    assert not torch.allclose(alone[2:], out.embeds[1, 2:4])  # [6, 11) partial: masked vs zeros


def test_query_init_std():
    assert build("window_qformer").query.std() < 0.1  # BLIP-2's 0.02 by default
    options = TINY["window_qformer"].model_copy(update={"query_init_std": 1.0, "num_queries": 64})
    assert 0.7 < build("window_qformer", options).query.std() < 1.3  # Granite Speech's N(0, 1)


def test_narrow_qformer_starts_with_the_audio_in_its_output():
    """A random Q-Former's weights get BERT's 0.02 scaled by sqrt(768 / width): at 768 exactly BLIP-2's init, and a
    96-wide one starts as a 768-wide one does, its windows' outputs differing by about a fifth of their size. At a
    fixed 0.02 they differ by under 2% (the constant queries drown the audio; a tiny SALMONN then learns the text
    prior only)."""
    def window_spread(options) -> float:
        torch.manual_seed(0)
        factory = registry().get("adapter", "window_qformer").load_factory()
        adapter = factory(options, BuildContext(card=None, encoder_dim=160, encoder_frame_rate=RATE, llm_dim=D)).eval()
        hidden = torch.nn.functional.layer_norm(torch.randn(1, 17 * 64, 160), (160,))
        with torch.no_grad():
            out = adapter.qformer(query_embeds=adapter.query.expand(64, -1, -1),
                                  encoder_hidden_states=hidden.view(64, 17, 160)).last_hidden_state[:, 0]
        return audio_share(out)

    narrow = specs.WindowQFormerOptions(window=17, num_queries=1, hidden_size=96, num_heads=4, dropout=0.0)
    assert build("window_qformer", narrow.model_copy(update={"hidden_size": 768, "num_heads": 12})
                 ).qformer.config.initializer_range == pytest.approx(0.02)
    assert window_spread(narrow) > 0.1
    assert window_spread(narrow.model_copy(update={"init_std": 0.02})) < 0.03


# -- conformer ------------------------------------------------------------------------------------------------------
def test_conformer_adapter_uses_parakeet_blocks():
    from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderBlock

    adapter = build("conformer_adapter")
    assert len(adapter.layers) == 2 and all(isinstance(layer, ParakeetEncoderBlock) for layer in adapter.layers)
    batchnorm = build("conformer_adapter", TINY["conformer_adapter"].model_copy(update={"conv_norm": "batchnorm"}))
    assert isinstance(batchnorm.layers[0].conv.norm, nn.BatchNorm1d)


# -- CTC compression ------------------------------------------------------------------------------------------------
class FixedLogits(nn.Module):
    def __init__(self, labels: torch.Tensor, vocab: int):
        super().__init__()
        self.logits = nn.functional.one_hot(labels, vocab).double() * 10

    def forward(self, hidden):
        return self.logits.to(hidden.dtype)


def test_ctc_segments_collapse_runs_and_blanks():
    from slmzoo_plugins.adapters.ctc_compress import ctc_segments

    labels = torch.tensor([[0, 3, 3, 0, 5, 5, 5, 0], [3, 0, 3, 3, 1, 9, 9, 9]])
    index, lengths = ctc_segments(labels, torch.tensor([8, 5]))
    assert lengths.tolist() == [2, 3]  # [3, 5]; [3, 3, 1] (a blank separates repeats; padding is cut)
    assert index.tolist() == [[-1, 0, 0, -1, 1, 1, 1, -1], [0, -1, 1, 1, 2, -1, -1, -1]]
    index, lengths = ctc_segments(labels, torch.tensor([8, 5]), remove_blank=False)
    assert lengths.tolist() == [5, 4]
    index, lengths = ctc_segments(torch.zeros(1, 4, dtype=torch.long), torch.tensor([3]))
    assert lengths.tolist() == [1] and index.tolist() == [[0, 0, 0, -1]]  # all blank: one frame is kept


def test_ctc_compress_averages_each_run():
    options = TINY["ctc_compress"].model_copy(update={"vocab_size": 6, "num_layers": 0})
    adapter = build("ctc_compress", options).double().eval()
    labels = torch.tensor([[0, 3, 3, 0, 5, 5, 5, 0]])
    adapter.ctc_head = FixedLogits(labels, 6)
    hidden = frames("ctc_compress", [8])
    out = adapter(hidden, torch.tensor([8]))
    assert out.lengths.tolist() == [2]
    expected = torch.stack([hidden[0, 1:3].mean(0), hidden[0, 4:7].mean(0)])[None]
    torch.testing.assert_close(out.embeds, adapter.linear(expected))
    # an all-blank clip keeps one frame: the mean of all its frames
    adapter.ctc_head = FixedLogits(torch.zeros(1, 8, dtype=torch.long), 6)
    out = adapter(hidden, torch.tensor([8]))
    assert out.lengths.tolist() == [1]
    torch.testing.assert_close(out.embeds, adapter.linear(hidden.mean(1, keepdim=True)))


def test_ctc_loss_is_finite_and_trains_the_head():
    adapter = build("ctc_compress")
    with pytest.raises(RuntimeError, match="forward"):
        adapter.ctc_loss(torch.tensor([[1]]), torch.tensor([1]))
    adapter(frames("ctc_compress", LENGTHS, torch.float32), torch.tensor(LENGTHS))
    assert adapter.ctc_logits.shape == (2, 23, 4)
    loss = adapter.ctc_loss(torch.tensor([[1, 2, 3, 1], [2, 2, 0, 0]]), torch.tensor([4, 2]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert adapter.ctc_head.weight.grad.abs().sum() > 0


# -- TLTR -----------------------------------------------------------------------------------------------------------
def test_tltr_pools_time_and_merges_layers():
    adapter = build("tltr").double().eval()
    hidden = frames("tltr", [10])  # [1, 3, 10, C]
    out = adapter(hidden, torch.tensor([10]))
    assert out.embeds.shape == (1, 3, D) and out.lengths.tolist() == [3]
    # the last pooled step averages the 2 real frames of its window only
    shifted = hidden.clone()
    shifted[:, :, 8:] = shifted[:, :, 8:].mean(2, keepdim=True)  # same window mean, different frames
    torch.testing.assert_close(adapter(shifted, torch.tensor([10])).embeds, out.embeds)
    attention = build("tltr", TINY["tltr"].model_copy(update={"layer_pooling": "attention"})).double().eval()
    assert attention(hidden, torch.tensor([10])).embeds.shape == (1, 3, D)


# -- discrete units -------------------------------------------------------------------------------------------------
CENTERS = torch.eye(C)[:4] * 10  # four well separated centroids


def test_fit_codebook_recovers_separated_clusters():
    from slmzoo_plugins.adapters.discrete_units import fit_codebook

    generator = torch.Generator().manual_seed(1)
    points = CENTERS.repeat_interleave(50, 0) + 0.1 * torch.randn(200, C, generator=generator)
    means = points.view(4, 50, C).mean(1)  # what k-means converges to once every point is assigned right
    features = list(points[torch.randperm(200, generator=generator)].split([70, 30, 100]))
    codebook = fit_codebook(features, num_units=4, iters=20, seed=0)
    assert codebook.shape == (4, C)
    match = torch.cdist(means, codebook).argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(codebook[match], means)
    assert torch.equal(codebook, fit_codebook(features, num_units=4, iters=20, seed=0))  # deterministic
    with pytest.raises(ValueError, match="cannot make"):
        fit_codebook([points[:3]], num_units=4)


def test_discrete_units_assign_and_collapse():
    adapter = build("discrete_units", specs.DiscreteUnitsOptions(num_units=4))
    adapter.codebook.copy_(CENTERS)
    ids = torch.tensor([[2, 2, 0, 0, 0, 1, 2, 2], [3, 3, 1, 1, 1, 0, 0, 0]])
    hidden = CENTERS[ids] + 0.01 * torch.randn(2, 8, C)
    out = adapter(hidden, torch.tensor([8, 4]))
    assert out.embeds is None
    assert out.lengths.tolist() == [4, 2]
    assert out.units.tolist() == [[2, 0, 1, 2], [3, 1, -1, -1]]
    plain = build("discrete_units", specs.DiscreteUnitsOptions(num_units=4, dedup=False))
    plain.codebook.copy_(CENTERS)
    out = plain(hidden, torch.tensor([8, 4]))
    assert out.lengths.tolist() == [8, 4] and out.units[1].tolist() == [3, 3, 1, 1, -1, -1, -1, -1]
    assert plain.output_frame_rate(RATE) == RATE


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_discrete_units_codebook_file(tmp_path, suffix):
    path = tmp_path / f"codebook{suffix}"
    if suffix == ".npy":
        np.save(path, CENTERS.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"codebook": CENTERS}, path)
    adapter = build("discrete_units", specs.DiscreteUnitsOptions(codebook=str(path)))
    assert adapter.num_units == 4 and torch.equal(adapter.codebook, CENTERS)
    with pytest.raises(ValueError, match="num_units"):
        build("discrete_units", specs.DiscreteUnitsOptions(codebook=str(path), num_units=8))
    np.save(tmp_path / "narrow.npy", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="width"):
        build("discrete_units", specs.DiscreteUnitsOptions(codebook=str(tmp_path / "narrow.npy")))
