"""The contracts of the two kinds this plugin adds: :class:`Codec` and :class:`SpeechHead`.

Speech codes: each of the K codebooks has V codes plus three control codes, NeMo's (``duplex_s2s_model.py``
95-144): ``bos = V`` opens an agent turn, ``eos = V + 1`` closes it, ``delay = V + 2`` fills the first frame of a
session (the audio runs one frame behind the text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmzoo.components import Component


@dataclass(frozen=True)
class SpeechVocabulary:
    """Per-codebook vocabulary of ``codebook_size`` codes plus the three control codes."""

    num_codebooks: int
    codebook_size: int

    @property
    def bos(self) -> int:
        return self.codebook_size

    @property
    def eos(self) -> int:
        return self.codebook_size + 1

    @property
    def delay(self) -> int:
        return self.codebook_size + 2

    @property
    def size(self) -> int:
        """Codes per codebook the speech head predicts: ``V + 3``."""
        return self.codebook_size + 3


class Codec(Component):
    """A frozen audio codec. Subclasses set ``num_codebooks`` (K), ``codebook_size`` (V), ``frame_rate`` (frames per
    second) and ``sampling_rate``; the model keeps it in fp32 and eval mode and never trains it."""

    num_codebooks: int
    codebook_size: int
    frame_rate: float
    sampling_rate: int

    @property
    def samples_per_frame(self) -> int:
        return round(self.sampling_rate / self.frame_rate)

    def code_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of codes for ``lengths [B]`` samples (a partial last frame counts, as the codec pads it)."""
        return torch.div(lengths + self.samples_per_frame - 1, self.samples_per_frame, rounding_mode="floor")

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` at ``sampling_rate``, zero-padded, ``lengths [B]`` -> ``codes [B, K, T]`` (long, in
        ``[0, V)``) and their ``lengths [B]``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decode(self, codes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``codes [B, K, T]``, ``lengths [B]`` frames -> ``audio [B, T * samples_per_frame]`` and ``lengths [B]``
        in samples."""
        raise NotImplementedError  # pragma: no cover - abstract

    def context_fields(self) -> dict:
        return {"speech_vocabulary": SpeechVocabulary(self.num_codebooks, self.codebook_size),
                "codec_frame_rate": self.frame_rate, "codec_sampling_rate": self.sampling_rate}

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout and norms stay in inference mode


class SpeechHead(Component):
    """The agent's speech codes in and out of the LLM. ``embeds_into_llm``: the previous frame's codes are embedded
    (:meth:`embed`) and added to the LLM input (NeMo DuplexS2SModel); otherwise the head conditions on them itself
    (the speech-decoder variant)."""

    vocabulary: SpeechVocabulary
    embeds_into_llm: bool = True

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, T, K]`` -> ``[B, T, H]``: the sum of the K per-codebook embeddings."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, hidden: torch.Tensor, previous_codes: torch.Tensor) -> torch.Tensor:
        """``hidden [B, T, H]`` (the LLM's last states), ``previous_codes [B, T, K]`` (frame t-1's codes at t) ->
        ``logits [B, T, K, V + 3]`` for frame t's codes."""
        raise NotImplementedError  # pragma: no cover - abstract

    def step(self, hidden: torch.Tensor, previous_codes: torch.Tensor, state=None):
        """One frame while decoding: ``hidden [B, 1, H]``, ``previous_codes [B, 1, K]`` -> ``(logits [B, 1, K, V + 3],
        state)``; ``state`` (``None`` at the first frame) is whatever the head keeps between frames. Default: none,
        each frame on its own (a head that looks at no other frame)."""
        return self(hidden, previous_codes), state
