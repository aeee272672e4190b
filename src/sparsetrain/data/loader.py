"""A batch loader over tensors already on the device: no workers, no copies of the data set.

Order. An epoch's order is `torch.randperm(N)` drawn from a CPU `torch.Generator` seeded with
a hash of (seed, epoch) (the identity order when `shuffle=False`). Global batch b holds the
examples at positions [b*B, min((b+1)*B, N)) of that order, B = `batch_size`. The same
generator then draws every position's augmentation (crop offsets, flip) for the whole epoch
up front, so batch b's content depends on (seed, epoch, b) only: `epoch(e, start_batch=k)`
yields exactly the batches k, k+1, ... of `epoch(e)` (mid-epoch resume), augmentation included.

Ranks. `batch_size` is the *global* batch. With `world_size` W, rank r takes the contiguous
slice [lo + s*r//W, lo + s*(r+1)//W) of each global batch [lo, lo+s). Concatenating the ranks'
b-th batches in rank order gives the b-th batch of a single-process loader with the same
seed, for every W, so results do not depend on how many processes share the work. Every rank
yields the same number of batches. Use `drop_last=True` for training under DDP if the last,
partial global batch could be smaller than W (a rank's slice would then be empty).

Augmentation runs on the batch: "crop_flip" = random crop after 4-pixel reflect padding
(the reference system's `Pad(4, reflect) + RandomCrop`) and horizontal flip with
probability 1/2; "crop" and "flip" do one of the two. Then per-channel normalisation; the
loader yields float32 (n, C, H, W) images and int64 labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsetrain.data.info import DatasetInfo
from sparsetrain.errors import ConfigError
from sparsetrain.registry import Registry


@dataclass(frozen=True)
class Augmentation:
    name: str
    pad: int  # reflect padding before a random crop back to the input size (0: no crop)
    flip: bool  # random horizontal flip with probability 1/2


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
AUGMENTATIONS.add("crop_flip", Augmentation("crop_flip", 4, True))
AUGMENTATIONS.add("crop", Augmentation("crop", 4, False))
AUGMENTATIONS.add("flip", Augmentation("flip", 0, True))


def resolve_augment(augment: str | None) -> Augmentation | None:
    """None / "none" / "" -> None; otherwise a registered augmentation (unknown -> ConfigError)."""
    if (
        augment is None
        or augment is False
        or (isinstance(augment, str) and augment.lower() in ("", "none"))
    ):
        return None
    if not isinstance(augment, str):
        raise ConfigError(f"augment must be a name or None, got {augment!r}")
    return AUGMENTATIONS.get(augment)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch); distinct pairs give unrelated streams."""
    digest = hashlib.blake2b(f"sparsetrain.loader:{int(seed)}:{int(epoch)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def _reflect(i: Tensor, size: int) -> Tensor:
    """Map coordinates in [-size+1, 2*size-2] onto [0, size) like reflect padding."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def augment_batch(x: Tensor, shift: Tensor, flip: Tensor | None, pad: int) -> Tensor:
    """Random crop after reflect padding by `pad`, and horizontal flip, of a batch (any dtype).

    `shift` is (n, 2) integer (dy, dx) in [0, 2*pad]; `flip` is (n,) bool or None. Output pixel
    (i, j) of example k is padded[k, :, dy + i, dx + j'] with j' = W-1-j when flipped, else j,
    where padded = F.pad(x, (pad,) * 4, mode="reflect"). Implemented as two gathers with
    reflected indices, so no padded copy is made and uint8 batches stay uint8.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x
    if pad >= min(h, w):
        raise ConfigError(f"crop padding {pad} must be smaller than the image size {h}x{w}")
    dev = x.device
    rows = _reflect(torch.arange(h, device=dev)[None, :] + shift[:, 0:1] - pad, h)  # (n, H)
    base = torch.arange(w, device=dev)[None, :].expand(n, w)
    if flip is not None:
        base = torch.where(flip[:, None], (w - 1) - base, base)
    cols = _reflect(base + shift[:, 1:2] - pad, w)  # (n, W)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class Loader:
    """Batches of (float32 normalised images, int64 labels) from tensors on one device.

    `x` is (N, C, H, W) uint8 (0..255, as `load_splits` returns it) or floating point in
    [0, 1]; `y` is (N,) integer labels. See the module docstring for order, resume and ranks.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: str | None = None,
        info: DatasetInfo,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if x.ndim != 4:
            raise ConfigError(f"Loader expects (N, C, H, W) images, got shape {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"Loader expects {len(x)} labels, got shape {tuple(y.shape)}")
        n = len(x)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > n:
            raise ConfigError(
                f"batch_size {batch_size} is larger than the {n} examples of this {info.name} "
                f"split; use a batch size of at most {n}"
            )
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if batch_size < world_size:
            raise ConfigError(
                f"the global batch_size {batch_size} must be at least world_size {world_size}"
            )
        channels = x.shape[1]
        if len(info.mean) != channels or len(info.std) != channels:
            raise ConfigError(
                f"{info.name} normalisation has {len(info.mean)} channels, images have {channels}"
            )
        self.x = x
        self.y = y if y.dtype == torch.int64 else y.long()
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augmentation = resolve_augment(augment)
        if self.augmentation is not None and self.augmentation.pad >= min(x.shape[2:]):
            raise ConfigError(
                f"augmentation {self.augmentation.name!r} pads by {self.augmentation.pad}, too "
                f"much for {x.shape[2]}x{x.shape[3]} images"
            )
        self.info = info
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.num_examples = n
        self._num_batches = n // batch_size if drop_last else -(-n // batch_size)
        std = torch.tensor(info.std, dtype=torch.float32)
        mean = torch.tensor(info.mean, dtype=torch.float32)
        unit = 255.0 if x.dtype == torch.uint8 else 1.0
        self._scale = (1.0 / (std * unit)).view(1, -1, 1, 1).to(x.device)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(x.device)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self._num_batches

    def _draw(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n = self.num_examples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        shift = flip = None
        aug = self.augmentation
        if aug is not None:
            if aug.pad:
                shift = torch.randint(0, 2 * aug.pad + 1, (n, 2), generator=g)
            else:
                shift = torch.zeros(n, 2, dtype=torch.int64)
            if aug.flip:
                flip = torch.randint(0, 2, (n,), generator=g).bool()
        return order, shift, flip

    def global_order(self, epoch: int) -> Tensor:
        """Example indices of the whole epoch in batch order (all ranks together)."""
        return self._draw(epoch)[0]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's batches of `epoch`, starting at batch `start_batch` (mid-epoch resume)."""
        if not 0 <= start_batch <= len(self):
            raise ConfigError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        return self._iterate(int(epoch), int(start_batch))

    def _iterate(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order, shift, flip = self._draw(epoch)
        dev = self.x.device
        order = order.to(dev)
        if shift is not None:
            shift = shift.to(dev)
        if flip is not None:
            flip = flip.to(dev)
        n, bs, r, w = self.num_examples, self.batch_size, self.rank, self.world_size
        pad = self.augmentation.pad if self.augmentation is not None else 0
        for b in range(start_batch, len(self)):
            lo = b * bs
            size = min(bs, n - lo)
            first, last = lo + size * r // w, lo + size * (r + 1) // w
            idx = order[first:last]
            xb = self.x.index_select(0, idx)
            if shift is not None:
                fl = flip[first:last] if flip is not None else None
                xb = augment_batch(xb, shift[first:last], fl, pad)
            xb = torch.addcmul(self._shift, xb.to(torch.float32), self._scale)
            yield xb, self.y.index_select(0, idx)

    def __repr__(self) -> str:
        aug = self.augmentation.name if self.augmentation else None
        return (
            f"Loader({self.info.name}, n={self.num_examples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={aug}, rank={self.rank}/{self.world_size})"
        )
