"""Samplers and DataLoaders: Lhotse's DynamicBucketingSampler (batches of ``max_duration`` seconds, drawn
from duration buckets so little padding is wasted) or random batching, with workers.

Resume is exact because sampling is deterministic given the seed: a resumed run rebuilds the sampler and
skips the batches already consumed (metadata only, no audio is read), like Lhotse's own fast-forward.
"""

from __future__ import annotations

from typing import Iterator

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler


class IndexedBatches:
    """Yields ``(batch_index, cuts)`` from ``sampler``, starting after ``skip`` batches.

    The index seeds each batch's augmentation, so it is the same in any worker and after a resume.
    """

    def __init__(self, sampler, skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[tuple[int, CutSet]]:
        for index, cuts in enumerate(self.sampler):
            if index >= self.skip:
                yield index, cuts


def make_sampler(cuts: CutSet, max_duration: float, bucketing: bool = True, num_buckets: int = 10,
                 shuffle: bool = True, seed: int = 0, world_size: int | None = None, rank: int | None = None,
                 bins_estimate: int = 5000):
    if bucketing:
        return DynamicBucketingSampler(cuts, max_duration=max_duration, num_buckets=num_buckets, shuffle=shuffle,
                                       seed=seed, num_cuts_for_bins_estimate=bins_estimate,
                                       buffer_size=bins_estimate, world_size=world_size, rank=rank)
    return DynamicCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                             world_size=world_size, rank=rank)


def make_loader(dataset, sampler, skip: int = 0, num_workers: int = 0, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches come whole from the dataset (``batch_size=None``); each worker builds full batches.

    The loader gets its own generator: creating its iterator must not draw from the global torch RNG,
    or a resumed run's dropout masks would drift from the uninterrupted run's.
    """
    return torch.utils.data.DataLoader(dataset, sampler=IndexedBatches(sampler, skip), batch_size=None,
                                       num_workers=num_workers, prefetch_factor=2 if num_workers else None,
                                       persistent_workers=False, generator=torch.Generator().manual_seed(seed))
