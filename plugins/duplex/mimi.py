"""``mimi``: Kyutai's Mimi codec through transformers' ``MimiModel`` (24 kHz, 12.5 frames/s: one frame per 80 ms,
so it lines up one-to-one with a FastConformer's 8x-subsampled frames). Not NeMo's NanoCodec, which transformers does
not implement (``../shared/research/duplex.md`` §6.4): the natural transformers-native stand-in.

Mimi's encoder ignores ``padding_mask``: a batch's clips are encoded with their zero padding, and each clip's valid
frames come from ``get_encoded_length``.
"""

from __future__ import annotations

import torch

from slmzoo_plugins.duplex.components import Codec
from slmzoo_plugins.encoders.hf_loading import build_hf_model


class MimiCodec(Codec):
    def __init__(self, options, context=None):
        super().__init__()
        from transformers import MimiConfig, MimiModel

        self.model = build_hf_model(MimiModel, MimiConfig, pretrained=options.pretrained, config=options.config,
                                    context=context)
        self.config = self.model.config
        if options.num_codebooks > self.config.num_quantizers:
            raise ValueError(f"codec mimi: num_codebooks={options.num_codebooks} but the model has "
                             f"{self.config.num_quantizers} quantizers")
        self.num_codebooks = options.num_codebooks
        self.codebook_size = self.config.codebook_size
        self.frame_rate = float(self.config.frame_rate)
        self.sampling_rate = int(self.config.sampling_rate)
        self.requires_grad_(False)

    def code_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.get_encoded_length(lengths).long()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.model.encode(audio.float()[:, None, :], num_quantizers=self.num_codebooks).audio_codes
        frames = self.code_lengths(lengths).clamp(max=codes.shape[-1])
        return codes.long(), frames

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        audio = self.model.decode(codes.long()).audio_values[:, 0].float()
        samples = (lengths * self.samples_per_frame).clamp(max=audio.shape[-1])
        return audio, samples
