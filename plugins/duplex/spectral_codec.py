"""``spectral_kmeans``: a codec fitted in a minute on the agent's own speech, for models trained here from scratch.

No pretrained neural codec can be downloaded offline, and a random one produces noise. This one is honest and small:
each 80 ms frame holds K sub-frames of 10 ms; every sub-frame's log-magnitude spectrum is replaced by its nearest
centroid of a k-means codebook fitted on the corpus's agent audio (``slmzoo codec fit``), so codebook k of a frame
codes its k-th sub-frame (the K codebooks share one table of V centroids). Decoding looks the spectra up and
recovers a waveform by Griffin-Lim. With one synthetic agent voice the reconstruction stays intelligible; the
proof of a duplex model transcribes it (and measures the codec's own ceiling the same way).
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmzoo_plugins.adapters.discrete_units import fit_codebook, load_codebook, nearest_centroid
from slmzoo_plugins.duplex.components import Codec

FLOOR = 1e-5  # log-magnitude floor


class CodecFitError(ValueError):
    """What ``slmzoo codec fit`` cannot do with the card or data it was given (a message for people)."""


class SpectralKMeansCodec(Codec):
    def __init__(self, options, context=None):
        super().__init__()
        self.sampling_rate = options.sampling_rate
        self.frame_rate = options.frame_rate
        self.num_codebooks = options.sub_frames
        self.n_fft, self.iters = options.n_fft, options.griffin_lim_iters
        self.hop = round(self.sampling_rate / self.frame_rate / options.sub_frames)
        if self.hop * options.sub_frames * self.frame_rate != self.sampling_rate:
            raise ValueError(f"codec spectral_kmeans: {self.sampling_rate} Hz at {self.frame_rate} frames/s does not "
                             f"split into {options.sub_frames} whole sub-frames")
        self.window_length = min(options.n_fft, 2 * self.hop + self.hop // 2)  # 25 ms at 10 ms hops
        bins = options.n_fft // 2 + 1
        from_config = context is not None and context.from_config
        if options.codebook is not None and not from_config:
            codebook = load_codebook(options.codebook)
            if codebook.shape[1] != bins:
                raise ValueError(f"codec spectral_kmeans: codebook {options.codebook} has {codebook.shape[1]} "
                                 f"dims; n_fft {options.n_fft} gives {bins} frequency bins")
        else:  # random spectra (tiny tests) or placeholders the checkpoint fills
            codebook = torch.randn(options.codebook_size, bins, generator=torch.Generator().manual_seed(0)) - 4
        self.codebook_size = codebook.shape[0]
        self.register_buffer("codebook", codebook.float())
        self.register_buffer("window", torch.hann_window(self.window_length), persistent=False)
        self.options = options

    def standalone_options(self):
        return {"codebook": None, "codebook_size": self.codebook_size}  # the centroids travel in the weights

    # -- spectra ---------------------------------------------------------------------------------------------
    def spectra(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [B, S]`` (S a multiple of the frame size) -> log-magnitude ``[B, S / hop, F]``."""
        stft = torch.stft(audio.float(), self.n_fft, self.hop, self.window_length, self.window, center=True,
                          return_complex=True)
        return stft.abs().clamp(min=FLOOR).log().transpose(1, 2)[:, : audio.shape[1] // self.hop]

    def waveform(self, log_magnitude: torch.Tensor) -> torch.Tensor:
        """``[B, N, F]`` log-magnitude -> ``[B, N * hop]`` by Griffin-Lim (fixed initial phase: deterministic)."""
        magnitude = log_magnitude.exp().transpose(1, 2)  # [B, F, N]
        length = magnitude.shape[-1] * self.hop
        spectrum = magnitude.to(torch.complex64)
        for _ in range(self.iters):
            wave = torch.istft(spectrum, self.n_fft, self.hop, self.window_length, self.window, length=length)
            rebuilt = torch.stft(wave, self.n_fft, self.hop, self.window_length, self.window, return_complex=True)
            rebuilt = rebuilt[..., : magnitude.shape[-1]]
            spectrum = magnitude * torch.exp(1j * rebuilt.angle())
        return torch.istft(spectrum, self.n_fft, self.hop, self.window_length, self.window, length=length)

    def _frames(self, audio: torch.Tensor) -> torch.Tensor:
        size = self.samples_per_frame
        pad = (-audio.shape[1]) % size
        return torch.nn.functional.pad(audio, (0, pad))

    # -- the codec ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spectra = self.spectra(self._frames(audio))  # [B, T * K, F]
        codes = nearest_centroid(spectra, self.codebook)  # [B, T * K]
        codes = codes.view(codes.shape[0], -1, self.num_codebooks).transpose(1, 2)
        return codes.long(), self.code_lengths(lengths)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, frames = codes.shape
        spectra = self.codebook[codes.transpose(1, 2).reshape(batch, frames * self.num_codebooks)]
        audio = self.waveform(spectra)
        return audio, (lengths * self.samples_per_frame).clamp(max=audio.shape[1])

    # -- fitting -------------------------------------------------------------------------------------------------
    def fit(self, waves: list[torch.Tensor], codebook_size: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
        """k-means over the 10 ms log-magnitude spectra of ``waves`` (each ``[S_i]`` at ``sampling_rate``)."""
        spectra = [self.spectra(self._frames(w[None].float()))[0] for w in waves]
        return fit_codebook(spectra, codebook_size, iters=iters, seed=seed)


def fit_codec(card, manifest: str | Path, out: str | Path, codebook_size: int | None = None,
              max_utterances: int | None = None, iters: int = 30, seed: int = 0) -> dict:
    """Fit the codebook of a card's ``spectral_kmeans`` codec on the agent channel of a duplex manifest (or the
    recordings of any manifest) and save it (``.npy``); returns a summary."""
    import numpy as np

    from slmzoo.builder import BuildContext
    from slmzoo.data.manifests import eval_cuts
    from slmzoo_plugins.duplex.dataset import load_target_audio

    out = Path(out)
    if out.suffix != ".npy":
        raise CodecFitError(f"{out}: the codebook file must end in .npy")
    section = next((s.name for s in card.spec.sections if s.kind == "codec"), None)
    if section is None or card.data[section]["type"] != "spectral_kmeans":
        raise CodecFitError(f"{card.name}: codec fit needs a card whose codec is spectral_kmeans (e.g. --set "
                            "'codec={type: spectral_kmeans}')")
    codec = BuildContext(card=card).build_block("codec", card.data[section], section)
    cuts = eval_cuts(manifest)[: max_utterances or None]
    waves = [torch.from_numpy(load_target_audio(c, codec.sampling_rate) if "target_audio" in (c.custom or {})
                              else c.resample(codec.sampling_rate).load_audio().mean(0)) for c in cuts]
    if not waves:
        raise CodecFitError(f"{manifest}: no audio to fit a codec on")
    size = codebook_size or codec.codebook_size
    codebook = codec.fit(waves, size, iters=iters, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, codebook.numpy())
    return {"codebook": str(out), "codebook_size": size, "utterances": len(waves),
            "frames": sum(int(w.shape[0]) // codec.hop for w in waves), "use": f"--set {section}.codebook={out}"}
