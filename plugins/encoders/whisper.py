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

  Two options shape what a padded window gives (Voxtral sets both to the second value):

  - ``window_output``: ``clip`` (default) outputs the clip's frames only; ``window`` outputs all 1500 frames of
    every window, encoded silence included, as Voxtral's tower hands them to its projector.
  - ``long_clips``: ``cut`` (default) keeps a clip's first 30 s; ``split`` pads the clip to the next multiple of
    30 s, computes the log-mel over all of it (one ``max - 8`` clamp for the whole clip, STFT frames at a window
    edge see the next window's samples) and cuts it into 3000-frame windows, each encoded on its own, their frames
    concatenated in time: Voxtral's processor (``pad_to_multiple_of=480000``, then chunks of 3000 mel frames);
    ``windows`` cuts the clip into 30 s pieces first, each with its own log-mel (its own clamp, zero padding after
    the clip's last piece), encoded on its own, the windows' frames concatenated: Audio Flamingo 3's processor.
  - ``max_windows``: with ``split`` / ``windows``, at most this many windows; a longer clip is cut there with a
    warning (Audio Flamingo 3's processor truncates at ``max_audio_len``, 600 s: 20 windows).

- variable length with ``long_clips: split`` (Ultravox's processor and tower): a clip longer than 30 s has its
  own log-mel (one clamp, ``pad_to_hop`` as set) cut into 3000-frame windows, each encoded on its own from
  position 0; a short last window is zero-padded to 3000 mel frames, which is masked out of attention only (its
  conv stem sees the zeros), as Ultravox pads its last chunk. A clip within 30 s is encoded as in plain variable
  length. ``window_multiple: k`` rounds each window's frames of such a clip up to a multiple of ``k``, keeping
  what the tower computes at those padded positions (zeros past 1500): a ``stack`` adapter with that ``k`` then
  stacks each window on its own, as Ultravox's projector stacks each chunk's tower output.

``pool: k`` average-pools the frames by ``k`` after the last layer and before the final LayerNorm, as
Qwen-Audio's and Qwen2-Audio's audio towers do (``AvgPool1d(k)``: floor lengths, a pooled frame never mixes a
clip's last frame with padding). The module layout stays transformers' ``WhisperEncoder``, so a Qwen2-Audio
``audio_tower`` or a Whisper checkpoint loads into it as is.

Weights are transformers' ``WhisperEncoder`` (``encoder.*`` here), loaded strictly from a WhisperModel,
WhisperForConditionalGeneration or bare-encoder checkpoint.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from slmzoo.components import Encoder, EncoderOutput, key_padding_bias, lengths_to_mask
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.features import HOP_LENGTH, N_FFT, SAMPLING_RATE, log_mel, mel_filters
from slmzoo_plugins.encoders.hf_loading import load_config, load_state_strict, tower_tensors
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.waveforms import check_waveforms

log = logging.getLogger("slmzoo.encoders")

MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding of the centred STFT needs more than n_fft // 2 samples
ENCODER_PREFIXES = ("model.encoder.", "encoder.", "model.audio_tower.", "audio_tower.")
BARE_ENCODER = ("conv1.", "conv2.", "embed_positions.", "layers.", "layer_norm.")
# What an audio LLM's Whisper-tower config must give (Qwen2-Audio's names; newer configs map them by attribute_map).
TOWER_FIELDS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
                "max_source_positions", "activation_function", "scale_embedding")


def tower_config(loaded, pretrained: str):
    """The WhisperConfig of an audio LLM whose audio tower is a Whisper encoder (Qwen2-Audio, AF3, Voxtral)."""
    from transformers import WhisperConfig

    tower = getattr(loaded, "audio_config", None)
    if tower is None or not all(hasattr(tower, field) for field in TOWER_FIELDS):
        raise PretrainedLoadError(f"encoder.pretrained: {pretrained!r} is a {type(loaded).__name__} checkpoint, "
                                  "neither Whisper nor an audio LLM with a Whisper audio tower (Qwen2-Audio, Audio "
                                  "Flamingo 3, Voxtral)")
    fields = {field: getattr(tower, field) for field in TOWER_FIELDS}
    return WhisperConfig(**fields, decoder_layers=1, decoder_attention_heads=fields["encoder_attention_heads"],
                         decoder_ffn_dim=fields["encoder_ffn_dim"])


def _config(options, from_config: bool):
    from transformers import WhisperConfig

    if options.config is not None and (from_config or options.pretrained is None):
        return WhisperConfig(**options.config)
    return load_config(WhisperConfig, options.pretrained,
                       convert=lambda loaded: tower_config(loaded, options.pretrained))


def _load_encoder_state(pretrained: str) -> dict[str, torch.Tensor]:
    """The encoder tensors of a transformers Whisper checkpoint, or the Whisper audio tower of an audio LLM
    checkpoint, keys relative to ``WhisperEncoder``: ``WhisperForConditionalGeneration`` nests them under
    ``model.encoder.``, ``WhisperModel`` under ``encoder.``, an audio LLM's tower under ``(model.)audio_tower.``, a
    bare encoder has none. Only encoder keys are read: the decoder or the LLM never leaves the disk."""
    return tower_tensors(pretrained, ENCODER_PREFIXES, BARE_ENCODER)


def init_conv_stem(encoder: nn.Module) -> None:
    """He init of a random Whisper's two convolutions (each leads to a GELU), zero biases. transformers' std-0.02
    init shrinks the log-mel by ``0.02 * sqrt(fan_in)`` per conv (~0.1 over both at width 96), so the sinusoidal
    positions added next are ~30x the audio and the encoder's output hardly depends on it (2% at width 96); with
    He init the frames reach the first layer at about the positions' scale."""
    for conv in (encoder.conv1, encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)


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
                              "WhisperEncoder")
        elif options.pretrained is None:  # random weights, to be trained
            init_conv_stem(self.encoder)
        self.config = config
        self.pad_to_window = options.pad_to_window
        self.window_attention_mask, self.pool = options.window_attention_mask, options.pool
        self.window_output, self.long_clips = options.window_output, options.long_clips
        self.max_windows, self.pad_to_hop = options.max_windows, options.pad_to_hop
        self.window_multiple = options.window_multiple or 1
        # One output frame: a mel frame (one conv frame) or, pooled, `pool` conv frames (2 * pool - 1 mel frames).
        self.min_samples = max(MIN_SAMPLES, (2 * self.pool - 1) * HOP_LENGTH)
        self.output_dim = config.d_model
        self.frame_rate = SAMPLING_RATE / HOP_LENGTH / 2 / self.pool  # 50.0 / pool: the second conv has stride 2
        self.num_layers = config.encoder_layers
        self.max_frames = config.max_source_positions  # 1500 output frames = 30 s
        self.window_samples = 2 * self.max_frames * HOP_LENGTH  # 480000 samples = 30 s
        self.selection = LayerSelection(options.layer, self.num_layers)
        self.stacks_layers = self.selection.stacks_layers
        # Not persistent: derived from num_mel_bins, never part of a checkpoint.
        self.register_buffer("mel_filters", torch.from_numpy(mel_filters(config.num_mel_bins)).float(),
                             persistent=False)

    # -- input checks ------------------------------------------------------------------------------
    def _check(self, audio: torch.Tensor, lengths: torch.Tensor) -> None:
        check_waveforms(audio, lengths, self.min_samples, "whisper encoder", SAMPLING_RATE)
        too_long = int(lengths.max()) // HOP_LENGTH > 2 * self.max_frames
        if not self.pad_to_window and self.long_clips != "split" and too_long:
            b = int(lengths.argmax())
            raise ValueError(f"whisper encoder: clip {b} is {int(lengths[b]) / SAMPLING_RATE:.2f} s long; Whisper's "
                             f"encoder covers at most {self.window_samples / SAMPLING_RATE:.0f} s "
                             f"(max_source_positions={self.max_frames}): split the clip, set "
                             "encoder.pad_to_window: true (cuts it at 30 s), or set encoder.long_clips: split "
                             "(encodes consecutive 30 s windows)")

    def windows(self, lengths: torch.Tensor, warn: bool = False) -> torch.Tensor:
        """``lengths [B]`` in samples -> 30 s windows per clip ``[B]``: 1, or ``ceil(len / 30 s)`` with
        ``long_clips: split`` / ``windows``, at most ``max_windows`` (the clip is cut there, as AF3's processor
        truncates at ``max_audio_len``). Variable length counts the clip's mel frames in 3000-frame windows."""
        if self.long_clips not in ("split", "windows"):
            return torch.ones_like(lengths)
        if self.pad_to_window:
            windows = ((lengths + self.window_samples - 1) // self.window_samples).clamp(min=1)
        else:
            frames = 2 * self.max_frames
            windows = ((self._hops(lengths) + frames - 1) // frames).clamp(min=1)
        if self.max_windows is not None and warn and bool((windows > self.max_windows).any()):
            seconds = self.max_windows * self.window_samples // SAMPLING_RATE
            longest = int(lengths.max()) / SAMPLING_RATE
            log.warning("whisper encoder: a clip of %.1f s exceeds %d s (encoder.max_windows %d); only its first %d s "
                        "are encoded", longest, seconds, self.max_windows, seconds)
        return windows if self.max_windows is None else windows.clamp(max=self.max_windows)

    # -- features ----------------------------------------------------------------------------------
    def _filters(self) -> torch.Tensor:
        # A module-wide .to(bfloat16) also casts this buffer; the filters are rebuilt in float32 then.
        if self.mel_filters.dtype == torch.float32:
            return self.mel_filters
        return torch.from_numpy(mel_filters(self.config.num_mel_bins)).float().to(self.mel_filters.device)

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` -> log-mel ``[B, n_mels, F]`` float32 and frame lengths ``[B]``.

        Variable length: each clip on its own samples (``F = max(len // 160)``, zeros past a clip's frames); with
        ``pad_to_hop`` zero-padded to whole hops first (``F = max(ceil(len / 160))``).
        ``pad_to_window``: each clip padded or cut to 30 s, ``F = 3000``; with ``long_clips: split`` padded to its
        ``n = windows(len)`` windows, ``F = 3000 * max(n)``, a clip's features over its own ``3000 * n`` frames
        (the feature extractor with ``pad_to_multiple_of=480000``, as Voxtral's processor calls it).
        """
        filters = self._filters()
        if self.pad_to_window:
            span = self.windows(lengths, warn=True) * self.window_samples  # [B] samples each clip is padded (cut) to
            clip = torch.minimum(lengths, span)
            padded = audio.new_zeros(audio.shape[0], int(span.max()), dtype=torch.float32)
            for b, n in enumerate(clip.tolist()):  # padding is written here, whatever the caller padded with
                padded[b, :n] = audio[b, :n]
            # Frames whose centre lies in the clip: the feature extractor's attention mask (ceil, not floor).
            mel_lengths = (clip + HOP_LENGTH - 1) // HOP_LENGTH
            if self.long_clips == "windows":  # every 30 s piece on its own: [B, n_mels, 3000 * max(windows)]
                return self._window_features(padded, span, filters), mel_lengths
            if bool((span == span[0]).all()):
                return log_mel(padded, filters), mel_lengths
            # Rows of different spans: each on its own span, so the max - 8 clamp never sees another clip's padding.
            mels = audio.new_zeros(audio.shape[0], filters.shape[1], int(span.max()) // HOP_LENGTH,
                                   dtype=torch.float32)
            for b, n in enumerate(span.tolist()):
                mels[b, :, : n // HOP_LENGTH] = log_mel(padded[b, :n], filters)
            return mels, mel_lengths
        hops = self._hops(lengths)
        mels = audio.new_zeros(audio.shape[0], filters.shape[1], int(hops.max()), dtype=torch.float32)
        for b, (n, frames) in enumerate(zip(lengths.tolist(), hops.tolist())):
            clip = audio[b, :n]
            if self.pad_to_hop:  # zeros up to the next hop, written here whatever the caller padded with
                clip = nn.functional.pad(clip, (0, frames * HOP_LENGTH - n))
            mel = log_mel(clip, filters)
            mels[b, :, : mel.shape[-1]] = mel
        return mels, hops

    def _hops(self, lengths: torch.Tensor) -> torch.Tensor:
        """Variable length: mel frames of each clip ``[B]``, ``ceil(len / 160)`` with ``pad_to_hop``, else floor."""
        return -(-lengths // HOP_LENGTH) if self.pad_to_hop else lengths // HOP_LENGTH

    def _window_features(self, padded: torch.Tensor, span: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """``padded [B, S]`` (each clip zero-padded to its ``span [B]`` of whole windows) -> the log-mel of each 30 s
        window computed alone, ``[B, n_mels, max(span) // 160]``."""
        window, frames = self.window_samples, self.window_samples // HOP_LENGTH
        mels = padded.new_zeros(padded.shape[0], filters.shape[1], int(span.max()) // HOP_LENGTH)
        for b, n in enumerate(span.tolist()):
            pieces = log_mel(padded[b, :n].reshape(n // window, window), filters)  # [windows, n_mels, 3000]
            mels[b, :, : n // HOP_LENGTH] = pieces.transpose(0, 1).reshape(filters.shape[1], n // window * frames)
        return mels

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` float, zero-padded on the right; ``lengths [B]`` in samples.

        Returns ``hidden [B, T, C]`` (``[B, L+1, T, C]`` for ``layer: all``) and ``lengths [B]`` in frames,
        padded frames zeroed. With ``long_clips: split`` a clip's windows follow each other along ``T``.
        """
        self._check(audio, lengths)
        mels, mel_lengths = self.features(audio, lengths)
        windows = self.windows(lengths)  # [B]; 1 each unless long_clips: split
        split = int(windows.sum()) != len(windows)
        conv_lengths = None if self.pad_to_window else mel_lengths
        if split:  # W = windows.sum() rows of 3000 mel frames, each clip's windows consecutive
            mels = nn.functional.pad(mels, (0, int(windows.max()) * 2 * self.max_frames - mels.shape[-1]))
            mels, mel_lengths = self._split_windows(mels, mel_lengths, windows)
            if conv_lengths is not None:  # a clip's windows past 30 s are encoded at 3000 frames, zeros and all
                conv_lengths = torch.where(windows.repeat_interleave(windows) > 1, mels.shape[-1], mel_lengths)
        mels = mels.to(self.encoder.conv1.weight.dtype)
        out_lengths = (mel_lengths - 1) // 2 + 1
        if self.pad_to_window and not self.window_attention_mask and self.pool == 1:
            states = self._forward_window(mels)
        else:
            # Variable length masks padded mel frames before the convolutions; a padded window does not.
            states = self._forward_layers(mels, conv_lengths, out_lengths)
        if self.pool > 1:
            out_lengths = out_lengths // self.pool
        hidden = self.selection(states)
        if self.pad_to_window and self.window_output == "window":  # every frame of every window, silence included
            out_lengths = torch.full_like(out_lengths, hidden.shape[-2])
        if split:
            hidden, out_lengths = self._join_windows(hidden, out_lengths, windows, self.window_multiple)
        hidden = hidden[..., : int(out_lengths.max()), :]
        mask = lengths_to_mask(out_lengths, hidden.shape[-2]).to(hidden.dtype)
        hidden = hidden * (mask[:, None, :, None] if hidden.dim() == 4 else mask[..., None])
        return EncoderOutput(hidden=hidden, lengths=out_lengths)

    def _split_windows(self, mels: torch.Tensor, mel_lengths: torch.Tensor,
                       windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mels [B, n_mels, 3000 * max(windows)]``, ``mel_lengths [B]`` -> ``[W, n_mels, 3000]`` (``W =
        windows.sum()``, a clip's windows consecutive, as Voxtral's processor stacks its chunks) and mel frames of
        the clip in each window ``[W]``."""
        frames = 2 * self.max_frames  # 3000 mel frames = 30 s
        rows, row_lengths = [], []
        for b, n in enumerate(windows.tolist()):
            rows.append(mels[b, :, : n * frames].reshape(mels.shape[1], n, frames).transpose(0, 1))
            starts = torch.arange(n, device=mel_lengths.device) * frames
            row_lengths.append((mel_lengths[b] - starts).clamp(0, frames))
        return torch.cat(rows), torch.cat(row_lengths)

    @staticmethod
    def _join_windows(hidden: torch.Tensor, lengths: torch.Tensor, windows: torch.Tensor,
                      multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [W, T, C]`` (or ``[W, L, T, C]``), ``lengths [W]`` per window -> each clip's windows concatenated
        in time, ``[B, max(windows) * T', C]`` (or ``[B, L, max(windows) * T', C]``), and ``lengths [B]``. A window
        of a clip with several keeps ``lengths`` rounded up to ``multiple`` frames (``T' = T`` rounded up too, zeros
        past ``T``), so the windows' frames follow each other; a clip's only window keeps its ``lengths``."""
        T, C = hidden.shape[-2:]
        padded_T = -(-T // multiple) * multiple
        hidden = nn.functional.pad(hidden, (0, 0, 0, padded_T - T))
        keep = torch.where(windows.repeat_interleave(windows) > 1, -(-lengths // multiple) * multiple, lengths)
        joined = hidden.new_zeros(len(windows), *hidden.shape[1:-2], int(windows.max()) * padded_T, C)
        joined_lengths, start = [], 0
        for b, n in enumerate(windows.tolist()):
            frames = 0
            for w in range(start, start + n):
                size = int(keep[w]) if w < start + n - 1 else padded_T  # the last window's padding is cut below
                joined[b, ..., frames : frames + size, :] = hidden[w, ..., :size, :]
                frames += int(keep[w])
            joined_lengths.append(keep[start : start + n].sum())
            start += n
        return joined, torch.stack(joined_lengths)

    def _forward_window(self, mels: torch.Tensor) -> list[torch.Tensor]:
        """``mels [B, n_mels, 3000]`` -> hidden states through transformers' own forward (the reference)."""
        if not self.selection.needs_all_states:
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
        keep = self.selection.needs_all_states
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
