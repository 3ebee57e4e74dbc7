"""NeMo's streaming Conformer options (the duplex cards' user channel): chunked-limited attention, causal depthwise
convolutions, layer-norm conv modules and un-normalised log-mel, in the ``conformer`` encoder and the
``conformer_adapter``."""

from __future__ import annotations

import pytest
import torch

import slmzoo
from slmzoo.card.errors import CardError
from slmzoo_plugins.encoders.streaming import chunked_limited_mask
from tests.conftest import speechlike

STREAMING = ["encoder.causal_convolutions=true", "encoder.conv_norm=layernorm", "encoder.config.layerdrop=0.0",
             "encoder.feature_extractor={normalize: NA}"]


def test_chunked_limited_mask_is_nemos_rule():
    """[left, right] = [2, 1]: chunks of 2 frames, each query sees its chunk and 2 // 2 = 1 chunk before it."""
    allowed = chunked_limited_mask(6, 2, 1).int().tolist()
    assert allowed == [[1, 1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [0, 0, 1, 1, 1, 1],
                       [0, 0, 1, 1, 1, 1]]
    assert chunked_limited_mask(4, -1, 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def _encoder(context: str):
    torch.manual_seed(0)
    card = slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder.att_context_size={context}", *STREAMING])
    return slmzoo.build(card).eval()


@pytest.mark.parametrize("context", ["[4, 1]", "null"])
def test_limited_context_keeps_later_audio_out_of_earlier_frames(context):
    model = _encoder(context)
    wave = torch.from_numpy(speechlike(2.0))[None]
    changed = wave.clone()
    changed[:, 16000:] = torch.randn(1, wave.shape[1] - 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    lengths = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        before = model.encoder(wave, lengths)
        after = model.encoder(changed, lengths)
        before_adapted = model.adapter(before.hidden, before.lengths).embeds
        after_adapted = model.adapter(after.hidden, after.lengths).embeds
    # the audio changes from 1.0 s = frame 12.5: frames 0-11 (chunks of 2 ending before frame 12) are untouched
    # with a limited context; with the full context every frame sees the change.
    untouched = torch.allclose(before.hidden[0, :12], after.hidden[0, :12], atol=1e-5)
    assert untouched == (context != "null")
    assert not torch.allclose(before.hidden[0, 12:], after.hidden[0, 12:])
    if context != "null":  # the adapter keeps full context here, so its frames all see the change
        assert not torch.allclose(before_adapted[0, :12], after_adapted[0, :12])


def test_streaming_adapter_keeps_later_frames_out_too():
    torch.manual_seed(0)
    card = slmzoo.load_card("salm", preset="tiny", overrides=[
        "adapter.att_context_size=[4, 1]", "adapter.causal_convolutions=true", "adapter.dropout=0.0"])
    adapter = slmzoo.build(card).eval().adapter
    hidden = torch.randn(1, 20, 96)
    changed = hidden.clone()
    changed[:, 10:] += 1.0
    lengths = torch.tensor([20])
    with torch.no_grad():
        a, b = adapter(hidden, lengths).embeds, adapter(changed, lengths).embeds
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-5)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_causal_convolutions_alone_leave_the_past_alone():
    """No attention limit, but one frame's change reaches earlier frames only through attention, so with
    att_context_size [-1, 0] (left: all, right: none) every earlier frame is untouched."""
    model = _encoder("[-1, 0]")
    wave = torch.from_numpy(speechlike(2.0))[None]
    changed = wave.clone()
    changed[:, 16000:] *= -1
    lengths = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        a, b = model.encoder(wave, lengths).hidden, model.encoder(changed, lengths).hidden
    assert torch.allclose(a[0, :12], b[0, :12], atol=1e-5)


def test_streaming_options_are_fastconformer_options():
    with pytest.raises(CardError, match="fastconformer only"):
        slmzoo.load_card("salm", preset="tiny", overrides=[
            "encoder={type: conformer, variant: wav2vec2_conformer, att_context_size: [70, 1]}"])
    with pytest.raises(CardError, match="right context"):
        slmzoo.load_card("salm", preset="tiny", overrides=["encoder.att_context_size=[70, -1]"])
