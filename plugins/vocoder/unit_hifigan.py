"""``unit_hifigan``: the unit HiFi-GAN of speech resynthesis (Polyak et al. 2021) through transformers'
``SeamlessM4TCodeHifiGan``: unit embedding -> (duration predictor) -> HiFi-GAN generator.

fairseq's ``CodeHiFiGANVocoder`` (the vocoder SpeechGPT and the textless S2ST work use over 1000 mHuBERT units) is
the same network: a unit embedding table, the same ``VariancePredictor`` (conv-ReLU-LayerNorm twice, a linear to
log(1 + duration)), HiFi-GAN V1 (``conv_pre``, transposed-conv upsamplers, multi-receptive-field residual blocks,
``conv_post``, tanh). SeamlessM4T adds a speaker and a language embedding concatenated to every frame; a
single-speaker fairseq vocoder is ``spkr_embed_dim: 0, lang_embed_dim: 0`` (one zero-width row each). fairseq
predicts durations only when asked (``dur_prediction``, for deduplicated units) and one sequence at a time;
SeamlessM4T always does and pads a batch after expanding it, which lets padding reach the convolutions. Here each
item is vocoded alone (a clip's speech never depends on its batch companions), and ``duration_prediction`` says
whether repeats are collapsed and durations predicted (deduplicated units) or each unit is one frame.
"""

from __future__ import annotations

import math

import torch

from slmzoo_plugins.adapters.discrete_units import collapse_repeats
from slmzoo_plugins.encoders.hf_loading import build_hf_model
from slmzoo_plugins.vocoder.components import Vocoder

#: The fields of ``SeamlessM4TConfig`` the vocoder reads (what a card's ``config`` holds and a save writes back).
VOCODER_FIELDS = ("unit_hifi_gan_vocab_size", "unit_embed_dim", "upsample_initial_channel", "upsample_rates",
                  "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes", "leaky_relu_slope",
                  "spkr_embed_dim", "lang_embed_dim", "vocoder_num_spkrs", "vocoder_num_langs",
                  "variance_predictor_kernel_size", "var_pred_dropout", "sampling_rate")


class UnitHifiGan(Vocoder):
    def __init__(self, options, context=None):
        super().__init__()
        from transformers import SeamlessM4TConfig
        from transformers.models.seamless_m4t.modeling_seamless_m4t import SeamlessM4TCodeHifiGan

        unknown = sorted(set(options.config or {}) - set(VOCODER_FIELDS))
        if unknown:
            raise ValueError(f"vocoder.config: {', '.join(unknown)} are not unit HiFi-GAN fields "
                             f"(known: {', '.join(VOCODER_FIELDS)})")
        self.model = build_hf_model(SeamlessM4TCodeHifiGan, SeamlessM4TConfig, pretrained=options.pretrained,
                                    config=options.config, context=context)
        self.config = self.model.config
        for key, value, limit in (("speaker", options.speaker, self.config.vocoder_num_spkrs),
                                  ("language", options.language, self.config.vocoder_num_langs)):
            if not 0 <= value < limit:
                raise ValueError(f"vocoder.{key}: {value} is not one of the vocoder's {limit} {key}s")
        self.num_units = int(self.config.unit_hifi_gan_vocab_size)
        self.sampling_rate = int(self.config.sampling_rate)
        self.hop_length = math.prod(self.config.upsample_rates)
        self.duration_prediction = options.duration_prediction
        self.speaker, self.language = options.speaker, options.language
        self.requires_grad_(False)

    def standalone_options(self) -> dict:
        return {"config": {key: getattr(self.config, key) for key in VOCODER_FIELDS}}

    def _expanded(self, units: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Per item the unit embeddings of its output frames, ``[F_i, C]``."""
        if self.duration_prediction:
            units, lengths = collapse_repeats(units, lengths)
        items = []
        for row, n in zip(units, lengths.tolist()):
            row = row[:n].long()
            if n and (int(row.min()) < 0 or int(row.max()) >= self.num_units):
                raise ValueError(f"vocoder unit_hifigan: a unit outside [0, {self.num_units})")
            embeds = self.model.unit_embedding(row)  # [T, C]
            if self.duration_prediction and n:
                log_durations = self.model.dur_predictor(embeds[None])[0]  # fairseq: exp(x) - 1, rounded, >= 1
                durations = torch.clamp(torch.round(torch.expm1(log_durations)).long(), min=1)
                embeds = torch.repeat_interleave(embeds, durations, dim=0)
            items.append(embeds)
        return items

    @torch.no_grad()
    def frames(self, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.tensor([e.shape[0] for e in self._expanded(units, lengths)], dtype=torch.long)

    @torch.no_grad()
    def forward(self, units: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        waves = []
        for embeds in self._expanded(units, lengths):
            if embeds.shape[0] == 0:
                waves.append(embeds.new_zeros(0))
                continue
            x = embeds.T[None]  # [1, C, F]
            speaker = self.model.speaker_embedding.weight[self.speaker][None, :, None].expand(1, -1, x.shape[-1])
            language = self.model.language_embedding.weight[self.language][None, :, None].expand(1, -1, x.shape[-1])
            waves.append(self.model.hifi_gan(torch.cat([language, x, speaker], dim=1))[0])  # SeamlessM4T's order
        samples = torch.tensor([w.shape[0] for w in waves], dtype=torch.long, device=units.device)
        audio = units.new_zeros((len(waves), int(samples.max()) if waves else 0), dtype=torch.float32)
        for i, wave in enumerate(waves):
            audio[i, : wave.shape[0]] = wave.float()
        return audio, samples
