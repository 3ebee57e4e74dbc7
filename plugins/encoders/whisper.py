"""``whisper``: the encoder of OpenAI Whisper on raw 16 kHz waveforms, 50 frames per second.

Two modes:

- variable length (default): log-mel of each clip's own samples, conv stem and transformer over the batch's
  longest clip only, padded keys masked. A clip's output is the same alone or in any batch, and a 2 s clip costs
  2 s of compute instead of 30 s. Features match the feature extractor run on the unpadded clip
  (``padding="do_not_pad"``). The 30 s-padded features differ only on the last frame, and only when
  ``samples % 160 < 40``: then its STFT window reaches past the clip end (reflect vs zero padding). The per-clip
  ``max - 8`` clamp is the same unless that last frame is the loudest (padded silence is far below any maximum).
- ``pad_to_window``: bit-for-bit the original: every clip padded (or cut) to 30 s, features over the whole window,
  all 1500 positions through transformers' own ``WhisperEncoder.forward`` without a mask. Output lengths still
  count only the clip's frames, so downstream drops the encoded silence. With ``window_attention_mask`` the
  padded positions are masked out of attention instead (Qwen2-Audio's audio tower).

``pool: k`` average-pools the frames by ``k`` after the last layer and before the final LayerNorm, as
Qwen-Audio's and Qwen2-Audio's audio towers do (``AvgPool1d(k)``: floor lengths, a pooled frame never mixes a
clip's last frame with padding). The module layout stays transformers' ``WhisperEncoder``, so a Qwen2-Audio
``audio_tower`` or a Whisper checkpoint loads into it as is.

Weights are transformers' ``WhisperEncoder`` (``encoder.*`` here), loaded strictly from a WhisperModel,
WhisperForConditionalGeneration or bare-encoder checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Encoder, EncoderOutput, key_padding_bias, lengths_to_mask
from slmzoo_plugins.encoders.features import HOP_LENGTH, N_FFT, SAMPLING_RATE, log_mel, mel_filters
from slmzoo_plugins.encoders.hf_loading import PretrainedLoadError, checkpoint_tensors, load_state_strict
from slmzoo_plugins.encoders.layers import LayerSelection
from slmzoo_plugins.encoders.waveforms import check_waveforms

MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding of the centred STFT needs more than n_fft // 2 samples


class WhisperLoadError(RuntimeError):
    pass


def _config(options, from_config: bool):
    from transformers import WhisperConfig

    if options.config is not None and (from_config or options.pretrained is None):
        return WhisperConfig(**options.config)
    if options.pretrained is None:
        raise WhisperLoadError("encoder: give pretrained (hub id or folder) or an inline config")
    try:
        return WhisperConfig.from_pretrained(options.pretrained)
    except Exception as error:
        raise WhisperLoadError(f"encoder.pretrained: cannot read the config of {options.pretrained!r} ({error}); "
                               "add an inline encoder.config with the published dimensions to build offline"
                               ) from None


def _load_encoder_state(pretrained: str) -> dict[str, torch.Tensor]:
    """The encoder tensors of a transformers Whisper checkpoint, keys relative to ``WhisperEncoder``.

    Only encoder keys are read: the decoder of a large checkpoint never leaves the disk.
    """
    try:
        tensors = checkpoint_tensors(pretrained, keep=lambda key: key.startswith(("model.encoder.", "encoder."))
                                     or not key.startswith(("model.", "decoder.")))
    except PretrainedLoadError as error:
        raise WhisperLoadError(str(error)) from None
    # WhisperForConditionalGeneration nests under model.encoder., WhisperModel under encoder., a bare encoder has none.
    for prefix in ("model.encoder.", "encoder."):
        if any(key.startswith(prefix) for key in tensors):
            return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    return {key: value for key, value in tensors.items() if not key.startswith(("model.", "decoder.", "proj_out."))}


class WhisperEncoder(Encoder):
    """Waveforms ``[B, S]`` at 16 kHz -> Whisper encoder states ``[B, T, C]`` at 50 frames/s."""

    sampling_rate = SAMPLING_RATE

    def __init__(self, options, context):
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

        config = _config(options, context.from_config)
        self.encoder = HFWhisperEncoder(config)
        if options.pretrained is not None and not context.from_config:
            load_state_strict(self.encoder, _load_encoder_state(options.pretrained), options.pretrained,
                              "WhisperEncoder", WhisperLoadError)
        self.config = config
        self.pad_to_window = options.pad_to_window
        if options.window_attention_mask and not options.pad_to_window:
            raise ValueError("encoder.window_attention_mask: applies with pad_to_window: true (variable length "
                             "always masks padding)")
        self.window_attention_mask, self.pool = options.window_attention_mask, options.pool
        # One output frame: a mel frame (one conv frame) or, pooled, `pool` conv frames (2 * pool - 1 mel frames).
        self.min_samples = max(MIN_SAMPLES, (2 * self.pool - 1) * HOP_LENGTH)
        self.output_dim = config.d_model
        self.frame_rate = SAMPLING_RATE / HOP_LENGTH / 2 / self.pool  # 50.0 / pool: the second conv has stride 2
        self.num_layers = config.encoder_layers
        self.max_frames = config.max_source_positions  # 1500 output frames = 30 s
        self.window_samples = 2 * self.max_frames * HOP_LENGTH  # 480000 samples = 30 s
        self.select = LayerSelection(options.layer, self.num_layers)
        self.stacks_layers = self.select.stacks_layers
        # Not persistent: derived from num_mel_bins, never part of a checkpoint.
        self.register_buffer("mel_filters", torch.from_numpy(mel_filters(config.num_mel_bins)).float(),
                             persistent=False)

    # -- input checks ------------------------------------------------------------------------------
    def _check(self, audio: torch.Tensor, lengths: torch.Tensor) -> None:
        check_waveforms(audio, lengths, self.min_samples, "whisper encoder", SAMPLING_RATE)
        if not self.pad_to_window and int(lengths.max()) // HOP_LENGTH > 2 * self.max_frames:
            b = int(lengths.argmax())
            raise ValueError(f"whisper encoder: clip {b} is {int(lengths[b]) / SAMPLING_RATE:.2f} s long; Whisper's "
                             f"encoder covers at most {self.window_samples / SAMPLING_RATE:.0f} s "
                             f"(max_source_positions={self.max_frames}): split the clip or use pad_to_window "
                             "(which cuts it)")


    # -- features ----------------------------------------------------------------------------------
    def _filters(self) -> torch.Tensor:
        # A module-wide .to(bfloat16) also casts this buffer; the filters are rebuilt in float32 then.
        if self.mel_filters.dtype == torch.float32:
            return self.mel_filters
        return torch.from_numpy(mel_filters(self.config.num_mel_bins)).float().to(self.mel_filters.device)

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` -> log-mel ``[B, n_mels, F]`` float32 and frame lengths ``[B]``.

        Variable length: each clip on its own samples (``F = max(len // 160)``, zeros past a clip's frames).
        ``pad_to_window``: each clip padded or cut to 30 s, ``F = 3000``.
        """
        filters = self._filters()
        if self.pad_to_window:
            window = audio.new_zeros(audio.shape[0], self.window_samples, dtype=torch.float32)
            for b, n in enumerate(lengths.tolist()):  # padding is written here, whatever the caller padded with
                n = min(n, self.window_samples)
                window[b, :n] = audio[b, :n]
            # Frames whose centre lies in the clip: the feature extractor's attention mask (ceil, not floor).
            mel_lengths = (lengths.clamp(max=self.window_samples) + HOP_LENGTH - 1) // HOP_LENGTH
            return log_mel(window, filters), mel_lengths
        mel_lengths = lengths // HOP_LENGTH
        mels = audio.new_zeros(audio.shape[0], filters.shape[1], int(mel_lengths.max()), dtype=torch.float32)
        for b, n in enumerate(lengths.tolist()):
            mel = log_mel(audio[b, :n], filters)
            mels[b, :, : mel.shape[-1]] = mel
        return mels, mel_lengths

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` float, zero-padded on the right; ``lengths [B]`` in samples.

        Returns ``hidden [B, T, C]`` (``[B, L+1, T, C]`` for ``layer: all``) and ``lengths [B]`` in frames,
        padded frames zeroed.
        """
        self._check(audio, lengths)
        mels, mel_lengths = self.features(audio, lengths)
        mels = mels.to(self.encoder.conv1.weight.dtype)
        out_lengths = (mel_lengths - 1) // 2 + 1
        if self.pad_to_window and not self.window_attention_mask and self.pool == 1:
            states = self._forward_window(mels)
        else:
            # Variable length masks padded mel frames before the convolutions; a padded window does not.
            states = self._forward_layers(mels, mel_lengths if not self.pad_to_window else None, out_lengths)
        if self.pool > 1:
            out_lengths = out_lengths // self.pool
        hidden = self.select(states)[..., : int(out_lengths.max()), :]
        mask = lengths_to_mask(out_lengths, hidden.shape[-2]).to(hidden.dtype)
        hidden = hidden * (mask[:, None, :, None] if hidden.dim() == 4 else mask[..., None])
        return EncoderOutput(hidden=hidden, lengths=out_lengths)

    def _forward_window(self, mels: torch.Tensor) -> list[torch.Tensor]:
        """``mels [B, n_mels, 3000]`` -> hidden states through transformers' own forward (the reference)."""
        if not self.select.needs_all_states:
            return [self.encoder(mels).last_hidden_state]
        return list(self.encoder(mels, output_hidden_states=True).hidden_states)

    def _forward_layers(self, mels: torch.Tensor, mel_lengths: torch.Tensor | None,
                        lengths: torch.Tensor) -> list[torch.Tensor]:
        """``mels [B, n_mels, F]`` -> ``num_layers + 1`` states ``[B, T, C]`` (or only the last), as
        ``output_hidden_states`` orders them: conv + positions, after each layer, the last after the final norm
        (and after pooling by ``pool``, which the other states get too). ``mel_lengths``: zero the padded mel
        frames before each conv (variable length); ``lengths``: frames per clip, padded keys are masked."""
        enc = self.encoder
        x = mels
        if mel_lengths is not None:  # so a clip's edge frames see the zeros they see alone
            mel_mask = lengths_to_mask(mel_lengths, mels.shape[-1]).to(mels.dtype)[:, None, :]
            x = nn.functional.gelu(enc.conv1(mels * mel_mask)) * mel_mask
        else:
            x = nn.functional.gelu(enc.conv1(x))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)  # [B, T, C]
        T = x.shape[1]
        if T > enc.embed_positions.num_embeddings:
            raise ValueError(f"whisper encoder: {T} frames exceed max_source_positions="
                             f"{enc.embed_positions.num_embeddings} (clips longer than 30 s)")
        hidden = x + enc.embed_positions.weight[:T]
        hidden = nn.functional.dropout(hidden, p=enc.dropout, training=self.training)
        # No mask when nothing is padded: sdpa keeps its fastest kernels.
        bias = None
        if bool((lengths < T).any()):
            bias = key_padding_bias(lengths, T, hidden.dtype).expand(-1, -1, T, -1)
        keep = self.select.needs_all_states
        states = [hidden] if keep else []
        for layer in enc.layers:
            if not (self.training and enc.layerdrop > 0.0 and torch.rand([]) < enc.layerdrop):
                hidden = layer(hidden, bias)
            if keep:
                states.append(hidden)
        hidden = enc.layer_norm(self._pool(hidden))
        if keep:
            states = [self._pool(state) for state in states[:-1]] + [hidden]
        else:
            states.append(hidden)
        return states

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> ``[B, T // pool, C]`` (AvgPool1d over time, floor)."""
        if self.pool == 1:
            return hidden
        return nn.functional.avg_pool1d(hidden.transpose(1, 2), self.pool, self.pool).transpose(1, 2)
