"""multi: sub-encoder options validated with located card errors; outputs aligned by time and concatenated."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field, ValidationError

from slmzoo import hookimpl
from slmzoo.builder import BuildContext
from slmzoo.card.errors import CardError
from slmzoo.card.loader import load_card
from slmzoo.components import Encoder, EncoderOutput, lengths_to_mask
from slmzoo.plugins import register_plugin, registry
from slmzoo.registry import ComponentSpec
from slmzoo_plugins.encoders.multi import alignment_matrix
from slmzoo_plugins.encoders.specs import EncoderOptions, MultiOptions

BEATS = dict(input_patch_size=16, embed_dim=24, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=40,
             encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, relative_position_embedding=True,
             num_buckets=16, max_distance=64, gru_rel_pos=True, deep_norm=True, dropout=0.0, attention_dropout=0.0)


class FakeOptions(EncoderOptions):
    rate: float = Field(..., description="frames per second")
    dim: int = 2
    sampling_rate: int = 16000


class FakeEncoder(Encoder):
    """Frame ``t`` of clip ``b`` is ``[t + 100 b, ...]``: alignment can be checked exactly. Padding reads as -1."""

    def __init__(self, options, context):
        super().__init__()
        self.frame_rate, self.output_dim, self.sampling_rate = options.rate, options.dim, options.sampling_rate
        self.weight = torch.nn.Parameter(torch.ones(options.dim))
        self.seen = None

    def forward(self, audio, lengths):
        self.seen = (audio.shape, lengths.tolist())
        out = (lengths * self.frame_rate / self.sampling_rate).long()
        t = torch.arange(int(out.max()), dtype=torch.float32)
        hidden = (t[None, :] + 100 * torch.arange(len(lengths))[:, None])[..., None] * self.weight
        return EncoderOutput(hidden=torch.where(lengths_to_mask(out)[..., None], hidden, -1.0), lengths=out)


class FakePlugin:
    @staticmethod
    @hookimpl
    def slmzoo_register_components(register):
        register(ComponentSpec(kind="encoder", name="fake_rate", description="test", options=FakeOptions,
                               factory=f"{__name__}:FakeEncoder"))


@pytest.fixture(autouse=True)
def fake_encoder():
    register_plugin(FakePlugin, name="test-fake-rate")
    yield
    from slmzoo.plugins import host

    host().unregister("test-fake-rate")


def build(**options):
    opts = MultiOptions.model_validate(options)
    spec = registry().get("encoder", "multi")
    return spec.load_factory()(opts, BuildContext(card=None))


def test_alignment_matrices():
    # same rate: identity; the target past the source's end repeats its last frame
    torch.testing.assert_close(alignment_matrix(3, 4, 50, 50, "linear"), torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32))
    # 50 -> 25: linear sits between frames 2j and 2j+1, pooling averages them, nearest takes the later one
    torch.testing.assert_close(alignment_matrix(4, 2, 50, 25, "linear"), torch.tensor([[.5, .5, 0, 0], [0, 0, .5, .5]]))
    torch.testing.assert_close(alignment_matrix(4, 2, 50, 25, "pool"), torch.tensor([[.5, .5, 0, 0], [0, 0, .5, .5]]))
    assert alignment_matrix(4, 2, 50, 25, "nearest").argmax(1).tolist() == [1, 3]
    # 25 -> 50: target j at (j + .5) / 50 s = source position j / 2 - .25
    torch.testing.assert_close(alignment_matrix(2, 4, 25, 50, "linear")[1:3],
                               torch.tensor([[.75, .25], [.25, .75]]))
    assert alignment_matrix(2, 4, 25, 50, "pool").argmax(1).tolist() == [0, 0, 1, 1]


def test_concat_aligned_to_first_with_exact_lengths():
    enc = build(encoders=[{"type": "fake_rate", "rate": 50, "dim": 3}, {"type": "fake_rate", "rate": 25}],
                resample="pool")
    assert enc.frame_rate == 50 and enc.output_dim == 5
    audio, lengths = torch.zeros(2, 16000), torch.tensor([16000, 8000])
    out = enc(audio, lengths)
    assert out.lengths.tolist() == [50, 25] and out.hidden.shape == (2, 50, 5)
    assert out.hidden[1, 25:].abs().max() == 0  # padding zero, never -1 from a sub-encoder's padding
    # 25 -> 50 by pooling: target j takes source j // 2; clip 1's source has 12 frames, the tail repeats the last.
    expected = torch.clamp(torch.arange(25) // 2, max=11) + 100.0
    torch.testing.assert_close(out.hidden[1, :25, 3], expected)
    torch.testing.assert_close(out.hidden[1, :25, 0], torch.arange(25) + 100.0)
    assert (out.hidden[:, :, 3:] >= 0).all()


@pytest.mark.parametrize("align, rate, length", [("max", 50, 50), ("min", 12.5, 12), ("first", 25, 25)])
def test_align_picks_the_target_rate(align, rate, length):
    enc = build(encoders=[{"type": "fake_rate", "rate": 25}, {"type": "fake_rate", "rate": 50},
                          {"type": "fake_rate", "rate": 12.5}], align=align, resample="nearest")
    out = enc(torch.zeros(1, 16000), torch.tensor([16000]))
    assert enc.frame_rate == rate and out.lengths.tolist() == [length] and out.hidden.shape == (1, length, 6)


def test_other_sampling_rates_are_resampled_per_clip():
    enc = build(encoders=[{"type": "fake_rate", "rate": 50}, {"type": "fake_rate", "rate": 50, "sampling_rate": 48000}])
    enc(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
    assert enc.encoders[1].seen == (torch.Size([2, 48000]), [48000, 24000])


def test_sub_encoder_options_are_validated_and_normalised():
    opts = MultiOptions.model_validate({"encoders": [{"type": "fake_rate", "rate": 50}]})
    assert opts.encoders == [{"type": "fake_rate", "layer": "last", "lora": None, "rate": 50.0, "dim": 2,
                              "sampling_rate": 16000}]
    with pytest.raises(ValidationError) as error:
        MultiOptions.model_validate({"encoders": [{"type": "fake_rate"}, {"type": "fake_rat", "rate": 1},
                                                  {"type": "fake_rate", "rate": 1, "dimm": 3}]})
    found = {(e["loc"], e["type"]) for e in error.value.errors()}
    assert found == {(("encoders", 0, "rate"), "missing"), (("encoders", 1, "type"), "unknown_encoder"),
                     (("encoders", 2, "dimm"), "extra_forbidden")}
    with pytest.raises(ValueError, match=r"encoders\[0\]\.layer: 'all'"):
        build(encoders=[{"type": "fake_rate", "rate": 50, "layer": "all"}])


def test_card_errors_point_at_the_sub_encoder_key(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("name: x\nllm: {type: hf_causal}\nadapter: {type: stack}\nencoder:\n  type: multi\n  encoders:\n"
                    "    - type: fake_rate\n      rate: 50\n      dimm: 3\n    - type: fake_rat\n")
    with pytest.raises(CardError) as error:
        load_card(card)
    text = str(error.value)
    assert f"{card}:9:7 encoder.encoders[0].dimm: unknown option" in text
    assert f"{card}:10:13 encoder.encoders[1].type: unknown encoder 'fake_rat' (did you mean fake_rate?)" in text


def test_beats_next_to_a_50hz_encoder():
    """BEATs (50 tokens/s) next to a 50 Hz encoder (Whisper's rate): tokens zip one for one, as SALMONN does."""
    torch.manual_seed(0)
    enc = build(encoders=[{"type": "fake_rate", "rate": 50}, {"type": "beats", "config": BEATS}]).eval()
    audio, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000])
    out = enc(audio, lengths)
    assert out.lengths.tolist() == [50, 28] and out.hidden.shape == (2, 50, 2 + 32)
    beats = enc.encoders[1](audio, lengths)  # 48 and 24 tokens: the last frames repeat the last token
    torch.testing.assert_close(out.hidden[0, :48, 2:], beats.hidden[0])
    torch.testing.assert_close(out.hidden[1, 24:28, 2:], beats.hidden[1, 23:24].expand(4, -1))


def test_sub_encoder_lora_is_applied():
    import yaml

    import slmzoo
    from slmzoo.card.loader import load_resolved

    data = slmzoo.load_card("wavllm", preset="tiny").data
    first, *rest = data["encoder"]["encoders"]
    data["encoder"]["encoders"] = [{**first, "lora": {"r": 2, "target_modules": ["q_proj"]}}, *rest]
    sub = slmzoo.build(load_resolved(yaml.safe_load(yaml.safe_dump(data)))).encoder.encoders[0]
    assert any("q_proj.lora_A" in n for n, _ in sub.named_parameters())
    assert all("lora_" in n for n, p in sub.named_parameters() if p.requires_grad)
