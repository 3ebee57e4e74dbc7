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


def _encoder(context: str, *extra: str):
    torch.manual_seed(0)
    card = slmzoo.load_card("salm", preset="tiny", overrides=[f"encoder.att_context_size={context}", *STREAMING,
                                                              *extra])
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


@pytest.mark.parametrize("causal", [True, False])
def test_causal_downsampling_reads_no_feature_frame_past_its_stride(causal):
    """Fully causal attention and convolutions: frame j of the 8x subsampling reads log-mel frames up to 8j when
    causal (NeMo's CausalConv2D), up to 8j + 7 when symmetric; a log-mel frame reaches 16 ms (n_fft / 2) ahead.
    The audio changes from 1.0 s: frame 12 (features <= 96, samples <= 15616) is untouched only when causal."""
    model = _encoder("[-1, 0]", f"encoder.causal_downsampling={str(causal).lower()}")
    wave = torch.from_numpy(speechlike(2.0))[None]
    changed = wave.clone()
    changed[:, 16000:] *= -1
    lengths = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        a, b = model.encoder(wave, lengths), model.encoder(changed, lengths).hidden
        one_second = model.encoder(wave[:, :16000], torch.tensor([16000]))
    assert torch.allclose(a.hidden[0, :12], b[0, :12], atol=1e-5)
    assert torch.allclose(a.hidden[0, 12], b[0, 12], atol=1e-5) == causal
    assert not torch.allclose(a.hidden[0, 13], b[0, 13], atol=1e-5)
    # 100 log-mel frames -> 51, 26, 14 (NeMo calc_length with kernel-1 + stride-1 padding) or 50, 25, 13
    assert one_second.lengths.tolist() == [14 if causal else 13] and one_second.hidden.shape[1] == (14 if causal else 13)
    assert int(a.lengths) == a.hidden.shape[1]
    # the frequency axis is padded too: 80 mel bins -> 41, 21, 11 (symmetric: 40, 20, 10)
    assert model.encoder.model.subsampling.linear.in_features == 64 * (11 if causal else 10)


def test_causal_downsampling_keeps_batches_invariant():
    model = _encoder("[70, 1]", "encoder.causal_downsampling=true")
    waves = [torch.from_numpy(speechlike(1.3, 0)), torch.from_numpy(speechlike(0.7, 1))]
    batch = torch.zeros(2, len(waves[0]))
    batch[0], batch[1, : len(waves[1])] = waves[0], waves[1]
    with torch.no_grad():
        together = model.encoder(batch, torch.tensor([len(w) for w in waves]))
        alone = model.encoder(waves[1][None], torch.tensor([len(waves[1])]))
    frames = int(alone.lengths)
    assert int(together.lengths[1]) == frames
    assert torch.allclose(together.hidden[1, :frames], alone.hidden[0], atol=1e-5)
    assert (together.hidden[1, frames:] == 0).all()


def test_streaming_options_are_fastconformer_options():
    with pytest.raises(CardError, match="fastconformer only"):
        slmzoo.load_card("salm", preset="tiny", overrides=[
            "encoder={type: conformer, variant: wav2vec2_conformer, att_context_size: [70, 1]}"])
    with pytest.raises(CardError, match="right context"):
        slmzoo.load_card("salm", preset="tiny", overrides=["encoder.att_context_size=[70, -1]"])
    with pytest.raises(CardError, match="random build"):
        slmzoo.load_card("salm", overrides=["encoder.causal_downsampling=true"])
