"""The training stream (excel/engine/sampler.py): one permutation for every pass (quirk 17), sharded like
DistributedSampler, resumable at any position, and seeded augmentation through DataLoader workers."""
from __future__ import annotations

from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader

from excel.data import VOCDataset
from excel.engine.sampler import InfiniteSampler, SeededItems


def test_every_pass_repeats_one_permutation():
    stream = [i for i, _ in islice(iter(InfiniteSampler(10, seed=3)), 30)]
    first = stream[:10]
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert stream[10:20] == first and stream[20:30] == first  # quirk 17: the same order every pass
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert [i for i, _ in islice(iter(InfiniteSampler(10, seed=4)), 10)] != first
    assert [i for i, _ in islice(iter(InfiniteSampler(10, shuffle=False)), 12)] == [*range(10), 0, 1]


def test_shards_pad_like_distributed_sampler_and_resume_mid_stream():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    padded = perm + perm[:2]  # 10 items over 4 ranks: padded to 12 with the head of the permutation
    shards = [InfiniteSampler(10, rank=r, world_size=4, seed=0) for r in range(4)]
    assert [s.indices for s in shards] == [padded[r::4] for r in range(4)]
    full = list(islice(iter(InfiniteSampler(10, rank=1, world_size=4, seed=0)), 20))
    resumed = list(islice(iter(InfiniteSampler(10, rank=1, world_size=4, seed=0, start=7)), 13))
    assert resumed == full[7:]  # indices and item seeds: a resumed run continues the same sequence
    assert len({seed for _, seed in full}) == len(full)  # every position gets its own augmentation seed


@pytest.mark.slow  # DataLoader worker processes
def test_seeded_items_make_worker_augmentation_repeatable(mini_voc):
    ds = SeededItems(VOCDataset(mini_voc, "train", stage="train", augment={"crop_size": 48}))

    def crops(start: int) -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=2, sampler=InfiniteSampler(len(ds), seed=1, start=start), num_workers=2)
        return [batch["image"] for batch in islice(iter(loader), 3)]

    first, again, later = crops(0), crops(0), crops(2)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(later[0], first[1])  # starting 2 samples in = the second batch of the full run
    assert not torch.equal(first[0], first[1])
