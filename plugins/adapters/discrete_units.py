"""``discrete_units``: token mapping: each frame becomes the id of its nearest k-means centroid.

The SpeechGPT / VoxtLM / SPIRIT-LM input side: k-means over the features of one SSL encoder layer (HuBERT),
nearest-centroid unit per frame, repeated units collapsed (``dedup``), and the units enter the LLM as new tokens
of its vocabulary. This adapter returns the units ``[B, T']`` (-1 past each clip's length) and no embeddings;
mapping unit ``k`` to its token id and embedding is the LLM side's job. The codebook ``[K, C]`` is a buffer,
random until loaded from ``codebook`` (.npy or .safetensors) or fitted with :func:`fit_codebook`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmzoo.components import Adapter, AdapterOutput, lengths_to_mask
from slmzoo_plugins.adapters.blocks import check_frames, require_frames

DEFAULT_NUM_UNITS = 500


def load_codebook(path: str | Path) -> torch.Tensor:
    """``[K, C]`` centroids from a ``.npy`` file or a ``.safetensors`` file (tensor ``codebook`` or its only one)."""
    path = Path(path)
    if path.suffix == ".npy":
        import numpy as np

        codebook = torch.from_numpy(np.load(path))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path)
        if "codebook" not in tensors and len(tensors) != 1:
            raise ValueError(f"adapter discrete_units: {path} holds {sorted(tensors)}; expected a tensor 'codebook'")
        codebook = tensors.get("codebook", next(iter(tensors.values())))
    else:
        raise ValueError(f"adapter discrete_units: codebook {path} must be a .npy or .safetensors file")
    if codebook.dim() != 2:
        raise ValueError(f"adapter discrete_units: codebook {path} has shape {list(codebook.shape)}; expected [K, C]")
    return codebook.float()


def nearest_centroid(features: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``features [..., C]``, ``codebook [K, C]`` -> ``[...]`` index of the nearest centroid (squared L2)."""
    flat = features.reshape(-1, features.shape[-1]).to(codebook.dtype)
    distances = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(-1))
    return distances.argmin(-1).view(features.shape[:-1])


def collapse_repeats(units: torch.Tensor, lengths: torch.Tensor):
    """Drop each unit equal to the one before it: ``units [B, T]`` -> ``[B, T']`` (-1 padded) and ``lengths``."""
    mask = lengths_to_mask(lengths, units.shape[1])
    keep = mask.clone()
    keep[:, 1:] &= units[:, 1:] != units[:, :-1]
    new_lengths = keep.sum(1)
    out = units.new_full((units.shape[0], units.shape[1] + 1), -1)  # spare last column takes dropped frames
    slot = torch.where(keep, keep.long().cumsum(1) - 1, units.shape[1])
    out.scatter_(1, slot, torch.where(keep, units, -1))
    return out[:, : int(new_lengths.max()) if new_lengths.numel() else 0], new_lengths


def fit_codebook(features: list[torch.Tensor], num_units: int, iters: int = 50, seed: int = 0,
                 chunk: int = 65536) -> torch.Tensor:
    """k-means (k-means++ init, then Lloyd) over the frames of ``features`` (each ``[T_i, C]``) -> ``[K, C]``.

    Deterministic for a given ``seed``. An emptied cluster is moved to the frame farthest from its centroid.
    """
    data = torch.cat([f.reshape(-1, f.shape[-1]) for f in features]).float()
    if data.shape[0] < num_units:
        raise ValueError(f"fit_codebook: {data.shape[0]} frames cannot make {num_units} units")
    generator = torch.Generator(device=data.device).manual_seed(seed)

    def assign(centroids):  # nearest centroid and squared distance per frame, in chunks to bound memory
        index, dist = [], []
        for rows in data.split(chunk):
            d = rows.pow(2).sum(-1, keepdim=True) - 2 * rows @ centroids.T + centroids.pow(2).sum(-1)
            best = d.min(-1)
            index.append(best.indices)
            dist.append(best.values.clamp(min=0))
        return torch.cat(index), torch.cat(dist)

    # k-means++: each next centroid drawn with probability proportional to the squared distance to the nearest
    first = torch.randint(data.shape[0], (1,), generator=generator, device=data.device)
    centroids = data[first]
    nearest = (data - centroids).pow(2).sum(-1)
    for _ in range(1, num_units):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, data[pick]])
        nearest = torch.minimum(nearest, (data - data[pick]).pow(2).sum(-1))
    for _ in range(iters):
        index, dist = assign(centroids)
        sums = torch.zeros_like(centroids).index_add_(0, index, data)
        counts = torch.bincount(index, minlength=num_units)
        updated = sums / counts.clamp(min=1)[:, None].to(data.dtype)
        for k in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.argmax())
            updated[k], dist[far] = data[far], 0
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


class DiscreteUnitsAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``units [B, T']`` (-1 padded), lengths; ``embeds`` is None."""

    fitted_on_encoder = True  # the codebook is k-means over the encoder in eval mode (``slmzoo units fit``)

    def __init__(self, options, context):
        super().__init__()
        require_frames("discrete_units", context)
        codebook = load_codebook(options.codebook) if options.codebook else None
        num_units = options.num_units or (codebook.shape[0] if codebook is not None else DEFAULT_NUM_UNITS)
        if codebook is not None:
            if codebook.shape[0] != num_units:
                raise ValueError(f"adapter discrete_units: codebook {options.codebook} has {codebook.shape[0]} "
                                 f"units but num_units is {num_units}")
            if codebook.shape[1] != context.encoder_dim:
                raise ValueError(f"adapter discrete_units: codebook {options.codebook} has width {codebook.shape[1]} "
                                 f"but the encoder gives {context.encoder_dim}")
        self.num_units, self.dedup = num_units, options.dedup
        self.register_buffer("codebook", torch.randn(num_units, context.encoder_dim))
        if codebook is not None and not self.codebook.is_meta:
            self.codebook.copy_(codebook)
        self.output_dim = context.llm_dim  # units become LLM tokens, embedded at the LLM width

    def output_frame_rate(self, input_frame_rate: float) -> float | None:
        return None if self.dedup else input_frame_rate  # dedup: depends on the speech, not its duration

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``units [B, T']`` (-1 past each length), ``lengths [B]``."""
        check_frames("discrete_units", hidden)
        units = nearest_centroid(hidden, self.codebook)
        if self.dedup:
            units, lengths = collapse_repeats(units, lengths)
        else:
            units = units.masked_fill(~lengths_to_mask(lengths, units.shape[1]), -1)
        return AdapterOutput(embeds=None, lengths=lengths, units=units)
