"""Batches sliced straight from in-memory uint8 tensors.

For datasets that fit in memory this beats a DataLoader that collates samples one by one
(~10% faster training of the basic / efficient U-Nets, measured on a 2-core CPU): one randperm per epoch, one gather and one
uint8 -> float conversion per batch. Shards by rank for DDP, and keeps its position so a
mid-epoch checkpoint resumes on the next batch (Lightning calls state_dict/load_state_dict).
"""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


class TensorBatches:
    def __init__(
        self,
        tensors: dict[str, Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        hflip: bool = False,
        epoch_fn: Callable[[], int] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        # on a GPU the whole (uint8) dataset moves there once: no per-batch host-to-device copy
        self.tensors = (
            {k: v.to(device) for k, v in tensors.items()} if device is not None else tensors
        )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.hflip = hflip
        self.epoch_fn = epoch_fn or (lambda: 0)
        self._resume_at = 0  # batches to skip on the next __iter__ (mid-epoch resume)
        self._served = 0

    @property
    def num_samples(self) -> int:
        n = len(self.tensors["image"])
        return n // self.world_size  # equal shards keep DDP ranks in step

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> Tensor:
        n = len(self.tensors["image"])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return order[self.rank : self.num_samples * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch_fn()
        device = self.tensors["image"].device
        # the epoch's order and flips go to the device once: no copy or host read per batch
        order = self._order(epoch).to(device)
        flip_gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        flips = (
            (torch.rand(len(order), generator=flip_gen) < 0.5).to(device) if self.hflip else None
        )
        start, self._resume_at = self._resume_at, 0
        for i in range(start, len(self)):
            self._served = i + 1
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = {k: v[idx] for k, v in self.tensors.items()}
            batch["image"] = to_model_range(batch["image"])
            if flips is not None:
                flip = flips[i * self.batch_size : (i + 1) * self.batch_size, None, None, None]
                batch["image"] = torch.where(flip, batch["image"].flip(-1), batch["image"])
            yield batch
        self._served = 0

    def state_dict(self) -> dict[str, int]:
        return {"served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        served = int(state.get("served", 0))
        # a checkpoint taken after the epoch's last batch resumes at the start of the next epoch
        self._resume_at = served if served < len(self) else 0
