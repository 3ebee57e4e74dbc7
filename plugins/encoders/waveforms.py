"""The input check every encoder shares: refuse what cannot be encoded, naming the clip and the reason."""

from __future__ import annotations

import torch

from slmzoo.components import lengths_to_mask

SAMPLING_RATE = 16000  # what the encoders here take, CLAP (48 kHz by default) excepted


def check_waveforms(audio: torch.Tensor, lengths: torch.Tensor, min_samples: int, name: str,
                    sampling_rate: int = 16000, unit: str = "one frame") -> torch.Tensor:
    """``audio [B, S]`` mono, ``lengths [B]`` within it, every clip at least ``min_samples`` long (``unit`` says
    what they make), finite over each clip's own samples (padding is never looked at).

    Returns ``lengths`` as int64 on the audio's device.
    """
    if audio.dim() != 2:
        hint = " (stereo or multi-channel? mix down to mono first)" if audio.dim() == 3 else ""
        raise ValueError(f"{name}: expected mono waveforms [B, S], got shape {list(audio.shape)}{hint}")
    if lengths.shape != audio.shape[:1]:
        raise ValueError(f"{name}: lengths {list(lengths.shape)} do not match a batch of {audio.shape[0]} clips")
    lengths = lengths.to(device=audio.device, dtype=torch.long)
    if (lengths > audio.shape[1]).any():
        raise ValueError(f"{name}: lengths {lengths.tolist()} exceed the {audio.shape[1]} samples given")
    if (lengths < min_samples).any():
        short = [i for i, n in enumerate(lengths.tolist()) if n < min_samples]
        raise ValueError(f"{name}: clips {short} have {[int(lengths[i]) for i in short]} samples, fewer than the "
                         f"{min_samples} ({min_samples / sampling_rate * 1000:.1f} ms) the encoder needs for {unit} "
                         "(empty or too short)")
    bad = (~torch.isfinite(audio) & lengths_to_mask(lengths, audio.shape[1])).any(dim=1)
    if bad.any():
        raise ValueError(f"{name}: NaN or inf samples in clip(s) {bad.nonzero().flatten().tolist()}")
    return lengths
