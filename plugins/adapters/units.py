"""Fitting the k-means codebook of a token-mapping adapter (``discrete_units``) over an encoder layer.

SpeechGPT, VoxtLM and SPIRIT-LM quantize HuBERT features with k-means; the card's encoder (and its
``layer``) defines the features, the adapter's ``num_units`` the codebook size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("slmzoo.units")


@torch.no_grad()
def encoder_features(model, cuts, batch_size: int = 8) -> list[torch.Tensor]:
    """Valid encoder frames ``[T_i, C]`` of each cut (unreadable audio is skipped and counted)."""
    from slmzoo.audio import pad_waveforms
    from slmzoo.data.dataset import BadItem, load_waveform

    model.eval()
    features, skipped = [], 0
    for start in range(0, len(cuts), batch_size):
        waves = []
        for cut in cuts[start:start + batch_size]:
            try:
                waves.append(load_waveform(cut, model.sampling_rate))
            except BadItem as error:
                skipped += 1
                log.warning("skipping %s: %s", cut.id, error.reason)
        if not waves:
            continue
        audio, lengths = pad_waveforms(waves)
        encoded = model.encoder(audio.to(model.device), lengths.to(model.device))
        if encoded.hidden.dim() != 3:
            raise ValueError("units fit: the encoder returns stacked layers; pick one with encoder.layer")
        features += [encoded.hidden[i, : int(n)].float().cpu() for i, n in enumerate(encoded.lengths)]
    if skipped:
        log.warning("skipped %d unreadable item(s)", skipped)
    return features


def fit_units(card, manifest: str | Path, out: str | Path, num_units: int | None = None,
              max_utterances: int | None = None, iters: int = 50, seed: int = 0, batch_size: int = 8) -> dict:
    """Fit and save a ``[K, C]`` codebook (``.npy`` or ``.safetensors``); returns a summary."""
    from slmzoo.builder import build
    from slmzoo.data.manifests import eval_cuts
    from slmzoo_plugins.adapters.discrete_units import fit_codebook

    out = Path(out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"{out}: the codebook file must end in .npy or .safetensors")
    adapter_type, adapter_options = card.component("adapter")
    if num_units is None:
        num_units = getattr(adapter_options, "num_units", None) or 500
    torch.manual_seed(seed)
    model = build(card)
    cuts = eval_cuts(manifest)[: max_utterances or None]
    features = encoder_features(model, cuts, batch_size)
    if not features:
        raise ValueError(f"{manifest}: no readable audio to fit units on")
    codebook = fit_codebook(features, num_units, iters=iters, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        import numpy as np

        np.save(out, codebook.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"codebook": codebook.contiguous()}, str(out))
    frames = sum(f.shape[0] for f in features)
    return {"codebook": str(out), "num_units": num_units, "dim": int(codebook.shape[1]),
            "utterances": len(features), "frames": frames, "adapter": adapter_type,
            "use": f"--set adapter.codebook={out}"}
