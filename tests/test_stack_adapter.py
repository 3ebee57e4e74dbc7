"""The stack adapter: shapes, lengths, padding invariance, variants."""

from __future__ import annotations

import pytest
import torch

import slmzoo
from slmzoo.builder import BuildContext
from slmzoo_plugins.adapters.specs import StackOptions
from slmzoo_plugins.adapters.stack import StackAdapter


def build(encoder_dim: int = 12, llm_dim: int = 64, **options) -> StackAdapter:
    torch.manual_seed(0)
    context = BuildContext(card=None, llm_dim=llm_dim, encoder_dim=encoder_dim)
    return StackAdapter(StackOptions(**options), context).eval()


@pytest.mark.parametrize("options", [
    dict(k=4),
    dict(k=3, activation="relu", norm="layernorm"),
    dict(k=8, activation="swiglu", norm="rmsnorm", hidden_dim=32),
    dict(k=1, activation="silu"),
])
def test_shapes_lengths_and_padding_invariance(options):
    adapter = build(**options)
    k = options["k"]
    lengths = torch.tensor([23, 9, 1])
    hidden = torch.randn(3, 23, 12)
    hidden[1, 9:] = 5.0  # garbage in the padding must not leak into the last real group
    out = adapter(hidden, lengths)
    expected = [-(-n // k) for n in lengths.tolist()]
    assert out.lengths.tolist() == expected
    assert out.embeds.shape == (3, -(-23 // k), 64)
    for b, n in enumerate(lengths.tolist()):
        alone = adapter(hidden[b : b + 1, :n], lengths[b : b + 1])
        assert alone.embeds.shape[1] == expected[b]
        assert (alone.embeds[0] - out.embeds[b, : expected[b]]).abs().max() < 1e-6
        assert (out.embeds[b, expected[b]:] == 0).all()


def test_output_rate_and_dim():
    adapter = build(k=5)
    assert adapter.output_frame_rate(50.0) == 10.0
    assert adapter.output_dim == 64


def test_swiglu_is_ultravox_projector():
    adapter = build(k=2, activation="swiglu", norm="rmsnorm")
    assert isinstance(adapter.norm, torch.nn.RMSNorm) and adapter.norm.eps == 1e-6  # Ultravox: eps 1e-6
    assert adapter.linear_1.weight.shape == (64, 24)  # hidden = llm width, halved by SwiGLU
    assert adapter.linear_2.weight.shape == (64, 32)
    x = torch.randn(1, 4, 12)
    stacked = adapter.norm(x.reshape(1, 2, 24))
    a, gate = adapter.linear_1(stacked).chunk(2, dim=-1)
    expected = adapter.linear_2(a * torch.nn.functional.silu(gate))
    assert torch.allclose(adapter(x, torch.tensor([4])).embeds, expected, atol=1e-6)


def test_mid_norm_is_ultravox_v05_projector():
    """v0.5+ (``projector_ln_mid``): ln_pre, linear_1 without bias, SwiGLU, ln_mid on the halved width, linear_2
    without bias; the released weights' names map one to one (ln_pre -> norm, ln_mid -> mid_norm)."""
    adapter = build(k=2, hidden_dim=16, activation="swiglu", norm="rmsnorm", mid_norm="rmsnorm", bias=False)
    released = {"ln_pre.weight": (24,), "linear_1.weight": (16, 24), "ln_mid.weight": (8,), "linear_2.weight": (64, 8)}
    ours = {name.replace("norm.", "ln_pre.").replace("mid_ln_pre.", "ln_mid."): tuple(p.shape)
            for name, p in adapter.state_dict().items()}
    assert ours == released
    with torch.no_grad():
        adapter.mid_norm.weight.uniform_(0.2, 0.6)  # Ultravox initialises its RMSNorms at norm_init 0.4
    x = torch.randn(1, 4, 12)
    a, gate = adapter.linear_1(adapter.norm(x.reshape(1, 2, 24))).chunk(2, dim=-1)
    expected = adapter.linear_2(adapter.mid_norm(a * torch.nn.functional.silu(gate)))
    assert torch.allclose(adapter(x, torch.tensor([4])).embeds, expected, atol=1e-6)


def test_norm_init_is_ultravox_rmsnorm_init():
    """Ultravox's ``RMSNorm(init=config.norm_init)`` fills both norms' weights with 0.4 (UltravoxConfig's default);
    the ultravox card asks for it, other cards keep torch's 1."""
    adapter = build(k=2, hidden_dim=16, activation="swiglu", norm="rmsnorm", mid_norm="rmsnorm", norm_init=0.4)
    assert (adapter.norm.weight == 0.4).all() and (adapter.mid_norm.weight == 0.4).all()
    assert (build(k=2, norm="layernorm").norm.weight == 1).all()
    assert slmzoo.load_card("ultravox").data["adapter"]["norm_init"] == 0.4


def test_stacks_consecutive_frames_in_order():
    adapter = build(k=2, encoder_dim=1, llm_dim=2, hidden_dim=2)
    seen = []
    adapter.linear_1.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    adapter(torch.arange(1.0, 6.0).view(1, 5, 1), torch.tensor([5]))
    assert seen[0].tolist() == [[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]]


def test_rejects_stacked_layers_and_odd_swiglu():
    context = BuildContext(card=None, llm_dim=64, encoder_dim=12, encoder_layers_stacked=True)
    with pytest.raises(ValueError, match="layer: all"):
        StackAdapter(StackOptions(k=2), context)
    with pytest.raises(ValueError, match="even"):
        build(k=2, activation="swiglu", hidden_dim=33)


def test_bias_false_is_voxtral_projector():
    """k=4, GELU, no biases: transformers' VoxtralMultiModalProjector on the tower output reshaped to 4 frames."""
    from transformers import VoxtralConfig
    from transformers.models.voxtral.modeling_voxtral import VoxtralMultiModalProjector

    adapter = build(k=4, bias=False)
    assert adapter.linear_1.bias is None and adapter.linear_2.bias is None
    config = VoxtralConfig(audio_config={"hidden_size": 12, "intermediate_size": 48},
                           text_config={"model_type": "llama", "hidden_size": 64}, projector_hidden_act="gelu")
    projector = VoxtralMultiModalProjector(config).eval()
    projector.load_state_dict({k: v for k, v in adapter.state_dict().items() if k.startswith("linear_")}, strict=True)
    hidden = torch.randn(2, 12, 12)  # as Voxtral's tower hands over 1500-frame chunks: a multiple of k
    with torch.no_grad():
        expected = projector(hidden.reshape(-1, 48)).reshape(2, 3, 64)
        out = adapter(hidden, torch.tensor([12, 12]))
    assert out.lengths.tolist() == [3, 3]
    assert torch.allclose(out.embeds, expected, atol=1e-6)


def test_bias_is_on_by_default():
    adapter = build(k=2)
    assert adapter.linear_1.bias is not None and adapter.linear_2.bias is not None
