"""A shuffling, DDP-sharding sampler and a DataLoader that resume at the exact next batch.

Every epoch is one seeded permutation of all rows, shared by all ranks; rank ``r`` of
``W`` takes positions ``r, r + W, r + 2W, ...``. After ``k`` samples per rank the ranks
together have consumed exactly the first ``k * W`` positions of the permutation. The
state is that "global position", so a restart continues with the batch it would have seen
next, and even a restart on a different number of ranks continues the same permutation.

The sampler alone cannot know what was consumed: a DataLoader with workers draws indices
ahead of the batches it has yielded. :class:`ResumableDataLoader` therefore counts the
batches it hands out and reports the state from that count.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils.seeding import generator

__all__ = ["ResumableDataLoader", "ResumableSampler", "build_dataloader"]


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffling, strided sharding over ranks, and an exact resume state.

    With ``drop_last`` the tail that does not divide evenly over ranks is skipped; without
    it the epoch is padded with its first positions (as ``DistributedSampler`` does) so all
    ranks see the same number of samples.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size}); fix the DDP setup")
        if num_samples < (world_size if drop_last else 1):
            raise ValueError(f"{num_samples} samples cannot feed {world_size} ranks; use more data or fewer ranks")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # global position the next __iter__ starts from

    @property
    def epoch_size(self) -> int:
        """Global positions in one epoch (a multiple of world_size)."""
        w = self.world_size
        return (self.num_samples // w) * w if self.drop_last else -(-self.num_samples // w) * w

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.num_samples)
        else:
            g = generator(self.seed, epoch)
            order = torch.randperm(self.num_samples, generator=g)
        size = self.epoch_size
        if size > len(order):  # pad by cycling: fewer rows than ranks needs several copies
            order = order.repeat(-(-size // len(order)))
        return order[:size]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning; setting the current epoch keeps a resumed position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.epoch_size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0  # only the first pass after a resume starts mid-epoch
        order = self._order(self.epoch)
        yield from order[start + self.rank :: self.world_size].tolist()

    def state_at(self, epoch: int, global_position: int) -> dict[str, Any]:
        """The resume state after ``global_position`` positions of ``epoch`` were consumed."""
        return {
            "epoch": epoch,
            "position": global_position // self.world_size,
            "global_position": global_position,
            "world_size": self.world_size,
            "seed": self.seed,
            "num_samples": self.num_samples,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.state_at(self.epoch, self.start)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_samples"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {getattr(self, key)}; "
                    "resume with the same data and seed"
                )
        self.epoch = int(state["epoch"])
        # Round down to whole steps of the current world size, so every rank gets the same
        # number of samples (a few may repeat when resuming on a different world size).
        g = int(state["global_position"])
        self.start = min(g - g % self.world_size, self.epoch_size)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict`` records the batches actually yielded.

    A full pass advances the sampler to the next epoch. ``state_dict``/``load_state_dict``
    follow the stateful-dataloader protocol Lightning checkpoints.
    """

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, batch_size: int, **kwargs):
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self._resumable = sampler
        self._active = False  # inside an iteration: state comes from the yielded count
        self._epoch = self._base = self._yielded = 0

    def __iter__(self):
        sampler = self._resumable
        self._epoch, self._base, self._yielded = sampler.epoch, sampler.start, 0
        self._active = True
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._active = False
        sampler.set_epoch(self._epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """The state after every batch yielded so far in this pass."""
        if not self._active:
            return self._resumable.state_dict()
        return self.state_after(self._yielded)

    def state_after(self, batches: int) -> dict[str, Any]:
        """The state after only the first ``batches`` batches of the current pass.

        For trainers that fetch ahead (Lightning's fetcher holds one batch beyond the
        step it runs): pass the number of batches actually trained on.
        """
        sampler = self._resumable
        if not self._active:
            return sampler.state_dict()
        consumed = min(batches, self._yielded) * self.batch_size * sampler.world_size
        return sampler.state_at(self._epoch, self._base + consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumable.load_state_dict(state)
        self._active = False


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
) -> ResumableDataLoader:
    """A resumable loader over ``dataset`` for one DDP rank.

    ``drop_last`` applies to both the sampler (uneven tail over ranks) and the last
    partial batch, so every rank runs the same number of equal-sized steps.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sampler = ResumableSampler(
        len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
    )
    return ResumableDataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
