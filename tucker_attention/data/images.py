"""Image data: scikit-learn's bundled digits offline; CIFAR-10 and image folders through 🤗 ``datasets``.

Every loader returns :class:`ImageData`: a train and a validation ``Dataset`` whose items are
``(image, label)`` with ``image`` a float tensor (C, H, W), already resized to ``image_size`` and
normalized with per-channel ``mean``/``std`` (computed on the training images unless given), and
``label`` an ``int``.

- :func:`digits` — **offline default.** 1,797 real 8×8 handwritten digits shipped inside scikit-learn.
- :func:`cifar10` — CIFAR-10 from the Hub (``uoft-cs/cifar10``), or the same columns from a local
  ``save_to_disk`` folder or an in-memory ``datasets.DatasetDict``.
- :func:`image_folder` — ``class_name/xxx.png`` folders via ``load_dataset("imagefolder")``.

Images of 🤗 data sets are decoded and transformed lazily, item by item (:class:`HFImageDataset`).
Optional training augmentation (random crop with zero padding + horizontal flip) uses torch ops only.
:func:`make_loader` builds a ``DataLoader`` whose order depends only on ``(seed, epoch)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..validation import check_choice, check_float, check_int
from .text import _import_optional

CIFAR10 = "uoft-cs/cifar10"
_ONE_CHANNEL_MODES = ("1", "L", "LA", "I", "I;16", "F", "P;L")


@dataclass
class ImageData:
    """An image classification data set, ready for a model.

    Attributes:
        train, val: Datasets of ``(image (C, H, W) float32, label int)``, normalized.
        num_classes: number of labels ``0 .. num_classes - 1``.
        image_size: H = W of every image.
        channels: C (1 for digits/grayscale, 3 for RGB).
        name: ``"digits"``, ``"cifar10"``, ``"image_folder"``, ...
        mean, std: per-channel statistics (of pixel values in [0, 1]) used to normalize.
        class_names: label names when known.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    channels: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, train={len(self.train):,}, val={len(self.val):,}, "
            f"num_classes={self.num_classes}, shape=({self.channels}, {self.image_size}, "
            f"{self.image_size}))"
        )


class ImageTensorDataset(TensorDataset):
    """Images and labels held as tensors; items are ``(images[i], int(labels[i]))``.

    Args:
        images: (N, C, H, W) float.
        labels: (N,) int64.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or not images.dtype.is_floating_point:
            raise ValueError(f"images must be a float (N, C, H, W) tensor, got {tuple(images.shape)} "
                             f"{images.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        super().__init__(images, labels.long())

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        return self.tensors[0][index], int(self.tensors[1][index])


# ----------------------------------------------------------------------------------------------
# transforms (torch ops only)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (C, H, W) or (N, C, H, W) to ``size × size`` (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    batched = images if images.ndim == 4 else images[None]
    shrink = size < max(images.shape[-2:])
    out = F.interpolate(batched, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out if images.ndim == 4 else out[0]


def augment_crop_flip(
    image: torch.Tensor, *, padding: int, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a horizontal flip with probability 1/2.

    Args:
        image: (C, H, W), pixel values before normalization (zero padding = black).
        generator: CPU generator; default torch's global RNG (seeded per DataLoader worker).

    Returns:
        (C, H, W).
    """
    _, h, w = image.shape
    if padding > 0:
        padded = F.pad(image, (padding, padding, padding, padding))
        i, j = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
        image = padded[:, i : i + h, j : j + w]
    if flip and torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    return image


def image_to_tensor(image: Any, *, channels: int) -> torch.Tensor:
    """A PIL image or an (H, W) / (H, W, C) uint8 array as a float (C, H, W) tensor in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL.Image.Image
        image = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {array.shape}")
    x = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a writable copy
    x = x.float() / 255.0 if array.dtype == np.uint8 else x.float()
    if x.shape[0] != channels:
        if x.shape[0] == 1:
            x = x.expand(channels, -1, -1)
        elif channels == 1:
            x = x[:3].mean(0, keepdim=True)
        else:
            x = x[:channels]
    return x.contiguous()


def _check_stats(name: str, value: Sequence[float] | None, channels: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = tuple(float(v) for v in value)
    if len(values) != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {value!r}")
    if name == "std" and min(values) <= 0:
        raise ValueError(f"std must be > 0 in every channel, got {value!r}")
    return values


# ----------------------------------------------------------------------------------------------
# 1. scikit-learn digits: offline


def _stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Per class, a seeded permutation; its first ``round(n_c * val_fraction)`` go to validation."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def digits(*, val_fraction: float = 0.2, seed: int = 0, image_size: int = 8) -> ImageData:
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 grayscale images, 10 classes). Offline.

    Pixels (0..16) are scaled to [0, 1], resized bilinearly to ``image_size`` (a multiple of 8; e.g. 32
    for a ViT with 4×4 patches on an 8×8 grid), split per class with a seeded permutation (stratified:
    ``round(n_c * val_fraction)`` of each class ``c`` to validation), then normalized with the training
    split's mean and std (so the training images have mean 0, std 1).

    Returns:
        ImageData with ``ImageTensorDataset`` splits: ``train.images`` (N_train, 1, S, S), ``labels``.
    """
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = check_int("seed", seed, low=0)
    image_size = check_int("image_size", image_size, low=8)
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
    sklearn_datasets = _import_optional("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    images = torch.from_numpy(bunch.images).float().div(16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target).long()
    images = resize(images, image_size)
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    mean = images[train_idx].mean().item()
    std = images[train_idx].std(unbiased=False).item()
    images = (images - mean) / std
    return ImageData(
        train=ImageTensorDataset(images[train_idx], labels[train_idx]),
        val=ImageTensorDataset(images[val_idx], labels[val_idx]),
        num_classes=10, image_size=image_size, channels=1, name="digits",
        mean=(mean,), std=(std,), class_names=tuple(str(i) for i in range(10)),
    )


# ----------------------------------------------------------------------------------------------
# 2. 🤗 datasets: CIFAR-10, image folders


class HFImageDataset(Dataset):
    """A map-style 🤗 ``datasets.Dataset`` of images, decoded and transformed item by item.

    Item ``i``: the image of ``image_column`` → float (C, H, W) in [0, 1] → bilinear resize to
    ``image_size`` → (if ``augment``) :func:`augment_crop_flip` with padding ``image_size // 8`` →
    ``(x - mean) / std`` per channel; the label is ``int(row[label_column])``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        image_column: str,
        label_column: str,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
    ) -> None:
        for column in (image_column, label_column):
            if column not in dataset.column_names:
                raise ValueError(f"column {column!r} is not in the data set's columns {dataset.column_names}")
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column
        self.image_size = image_size
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` resized but neither augmented nor normalized: ((C, S, S) in [0, 1], label)."""
        row = self.dataset[int(index)]
        x = resize(image_to_tensor(row[self.image_column], channels=self.channels), self.image_size)
        return x, int(row[self.label_column])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.load(index)
        if self.augment:
            x = augment_crop_flip(x, padding=self.image_size // 8)
        return (x - self.mean) / self.std, label


def _channel_stats(dataset: HFImageDataset, *, samples: int, seed: int) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and (population) std of pixel values over ``samples`` seeded training images."""
    n = len(dataset)
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=g)[: min(samples, n)].tolist()
    total = torch.zeros(dataset.channels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for i in indices:
        x = dataset.load(i)[0].double().flatten(1)  # (C, S*S)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _as_dataset_dict(source: Any, *, data_files: Any, cache_dir: Any, **load_kwargs: Any) -> Any:
    """A ``DatasetDict`` from a Hub name / loader name, a ``save_to_disk`` folder, or a (dict of)
    ``datasets.Dataset``."""
    datasets = _import_optional("datasets")
    if isinstance(source, datasets.DatasetDict):
        return source
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source})
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError("streaming (Iterable) data sets are not supported: images need random access")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"dataset_name must be a str, a path or a datasets.(Dataset|DatasetDict), got "
                        f"{type(source).__name__}")
    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    return datasets.load_dataset(
        str(source), data_files=data_files, cache_dir=None if cache_dir is None else str(cache_dir),
        **load_kwargs,
    )


def _train_val_splits(
    dsdict: Any, *, train_split: str, val_split: str | None, val_fraction: float, seed: int,
    label_column: str,
) -> tuple[Any, Any]:
    """Pick train/val splits; ``val_split="auto"``: the first of validation/val/test present, else
    (like ``None``) a seeded, stratified ``val_fraction`` carved out of the training split."""
    if train_split not in dsdict:
        raise ValueError(f"train_split must be one of the data set's splits {list(dsdict)}, "
                         f"got {train_split!r}")
    train = dsdict[train_split]
    if val_split == "auto":
        val_split = next((s for s in ("validation", "val", "test") if s in dsdict), None)
    if val_split is not None:
        if val_split not in dsdict:
            raise ValueError(f"val_split must be one of the data set's splits {list(dsdict)}, "
                             f"'auto' or None, got {val_split!r}")
        return train, dsdict[val_split]
    stratify = label_column if type(train.features.get(label_column)).__name__ == "ClassLabel" else None
    parts = train.train_test_split(test_size=val_fraction, seed=seed, stratify_by_column=stratify)
    return parts["train"], parts["test"]


def _hf_image_data(
    dsdict: Any,
    *,
    name: str,
    image_column: str,
    label_column: str,
    image_size: int,
    channels: int | None,
    train_split: str,
    val_split: str | None,
    val_fraction: float,
    seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    augment: bool,
    stats_samples: int,
    max_train: int | None,
    max_val: int | None,
) -> ImageData:
    image_size = check_int("image_size", image_size, low=1)
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = check_int("seed", seed, low=0)
    stats_samples = check_int("stats_samples", stats_samples, low=1)
    if channels is not None:
        channels = check_int("channels", channels, low=1)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
    train, val = _train_val_splits(dsdict, train_split=train_split, val_split=val_split,
                                   val_fraction=val_fraction, seed=seed, label_column=label_column)
    for arg, limit in (("max_train", max_train), ("max_val", max_val)):
        if limit is not None:
            check_int(arg, limit, low=1)
    if max_train is not None and max_train < len(train):
        train = train.shuffle(seed=seed).select(range(max_train))
    if max_val is not None and max_val < len(val):
        val = val.shuffle(seed=seed).select(range(max_val))
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"both splits need images, got {len(train)} train and {len(val)} val")

    if image_column not in train.column_names:
        raise ValueError(f"image_column must be one of the columns {train.column_names}, got {image_column!r}")
    if label_column not in train.column_names:
        raise ValueError(f"label_column must be one of the columns {train.column_names}, got {label_column!r}")
    if channels is None:
        first = train[0][image_column]
        mode = getattr(first, "mode", None)
        channels = 1 if (mode in _ONE_CHANNEL_MODES or (mode is None and np.asarray(first).ndim == 2)) else 3
    mean_t, std_t = _check_stats("mean", mean, channels), _check_stats("std", std, channels)

    def wrap(ds: Any, m: Sequence[float], s: Sequence[float], aug: bool) -> HFImageDataset:
        return HFImageDataset(ds, image_column=image_column, label_column=label_column,
                              image_size=image_size, channels=channels, mean=m, std=s, augment=aug)

    if mean_t is None or std_t is None:
        stats = _channel_stats(wrap(train, (0.0,) * channels, (1.0,) * channels, False),
                               samples=stats_samples, seed=seed)
        mean_t = mean_t if mean_t is not None else stats[0]
        std_t = std_t if std_t is not None else stats[1]

    feature = train.features.get(label_column)
    if type(feature).__name__ == "ClassLabel":
        num_classes, class_names = feature.num_classes, tuple(feature.names)
    else:
        num_classes, class_names = int(max(max(train[label_column]), max(val[label_column]))) + 1, None
    return ImageData(
        train=wrap(train, mean_t, std_t, augment), val=wrap(val, mean_t, std_t, False),
        num_classes=num_classes, image_size=image_size, channels=channels, name=name,
        mean=tuple(mean_t), std=tuple(std_t), class_names=class_names,
    )


def cifar10(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dataset_name: Any = CIFAR10,
    image_size: int = 32,
    data_files: Any = None,
    image_column: str = "img",
    label_column: str = "label",
    train_split: str = "train",
    val_split: str | None = "test",
    val_fraction: float = 0.1,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
    stats_samples: int = 2048,
    max_train: int | None = None,
    max_val: int | None = None,
) -> ImageData:
    """CIFAR-10 (50,000 train / 10,000 test 32×32 RGB images, 10 classes) through 🤗 ``datasets``.

    ``dataset_name`` may be a Hub name (default ``uoft-cs/cifar10``; needs internet once, then the 🤗
    cache), a local folder written by ``save_to_disk``, or a ``datasets.DatasetDict``/``Dataset`` with
    the same columns (``img``: image, ``label``: int or ClassLabel) — the same code path runs offline.
    Other image classification sets work too (e.g. ``"uoft-cs/cifar100"`` with
    ``label_column="fine_label"``).

    Args:
        val_split: split used for validation; ``"auto"`` picks validation/val/test; ``None`` carves a
            seeded, stratified ``val_fraction`` out of ``train_split``.
        mean, std: per-channel normalization; default computed on ``stats_samples`` seeded training
            images (after resizing).
        augment: random crop (padding ``image_size // 8``) and horizontal flip for training items.
        max_train, max_val: keep a seeded random subset of this many images (quick CPU runs).

    Returns:
        ImageData of :class:`HFImageDataset` splits; items ``((C, image_size, image_size), int)``.
    """
    dsdict = _as_dataset_dict(dataset_name, data_files=data_files, cache_dir=cache_dir)
    name = "cifar10" if dataset_name == CIFAR10 or not isinstance(dataset_name, str) else (
        Path(dataset_name).name or str(dataset_name)
    )
    return _hf_image_data(
        dsdict, name=name, image_column=image_column, label_column=label_column, image_size=image_size,
        channels=None, train_split=train_split, val_split=val_split, val_fraction=val_fraction,
        seed=seed, mean=mean, std=std, augment=augment, stats_samples=stats_samples,
        max_train=max_train, max_val=max_val,
    )


def image_folder(
    data_dir: str | os.PathLike[str],
    *,
    image_size: int = 32,
    channels: int | None = None,
    val_split: str | None = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    stats_samples: int = 2048,
    max_train: int | None = None,
    max_val: int | None = None,
) -> ImageData:
    """Images in ``data_dir/<class>/*.png|jpg`` (or ``data_dir/{train,test}/<class>/...``), labels from
    the folder names, via ``load_dataset("imagefolder", data_dir=...)`` — e.g. an ImageNet subset.

    Without a validation/val/test split on disk, a seeded, stratified ``val_fraction`` of the images
    is held out. ``channels`` default: 1 for grayscale images, else 3. Other arguments: :func:`cifar10`.
    """
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a str or path, got {type(data_dir).__name__}")
    if not Path(data_dir).is_dir():
        raise ValueError(f"data_dir must be an existing folder, got {str(data_dir)!r}")
    datasets = _import_optional("datasets")
    dsdict = datasets.load_dataset(
        "imagefolder", data_dir=str(data_dir), cache_dir=None if cache_dir is None else str(cache_dir)
    )
    return _hf_image_data(
        dsdict, name="image_folder", image_column="image", label_column="label", image_size=image_size,
        channels=channels, train_split="train", val_split=val_split, val_fraction=val_fraction,
        seed=seed, mean=mean, std=std, augment=augment, stats_samples=stats_samples,
        max_train=max_train, max_val=max_val,
    )


IMAGE_LOADERS: dict[str, Callable[..., ImageData]] = {
    "digits": digits,
    "cifar10": cifar10,
    "image_folder": image_folder,
}


def load_images(name: str = "digits", **kwargs: Any) -> ImageData:
    """Load images by name: ``"digits"`` (offline), ``"cifar10"``, ``"image_folder"``; ``kwargs`` go to
    :func:`digits`, :func:`cifar10` or :func:`image_folder`."""
    check_choice("name", name, sorted(IMAGE_LOADERS))
    return IMAGE_LOADERS[name](**kwargs)


# ----------------------------------------------------------------------------------------------
# loaders whose order is a function of (seed, epoch)


class SeededSampler(Sampler[int]):
    """Sample order that depends only on ``(seed, epoch)`` — what exact resume needs.

    Epoch ``e`` visits ``torch.randperm(n)`` drawn from a generator seeded by a hash of ``(seed, e)``
    (``range(n)`` without ``shuffle``). Each ``iter()`` uses the current :attr:`epoch` and then
    advances it by one, so a plain ``for epoch ...: for batch in loader`` sees a new order each
    epoch; to resume, call :meth:`set_epoch` with the epoch and the number of samples already seen.
    With ``num_replicas > 1`` (DistributedDataParallel) rank ``r`` takes every ``num_replicas``-th
    index starting at ``r``, the permutation padded by wrapping so every rank gets as many.
    """

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.num_samples = check_int("num_samples", num_samples, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.num_replicas = check_int("num_replicas", num_replicas, low=1)
        self.rank = check_int("rank", rank, low=0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be < num_replicas={num_replicas}, got {rank}")
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next ``iter()`` yields epoch ``epoch``'s order from position ``start`` (this rank's)."""
        self.epoch = check_int("epoch", epoch, low=0)
        self.start = check_int("start", start, low=0)

    def indices(self, epoch: int) -> list[int]:
        """This rank's full order of epoch ``epoch``."""
        if self.shuffle:
            digest = hashlib.sha256(f"{self.seed}:{epoch}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = -(-self.num_samples // self.num_replicas)
        total = per_rank * self.num_replicas
        order = (order * (-(-total // len(order))))[:total]
        return order[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return max(0, -(-self.num_samples // self.num_replicas) - self.start)

    def __iter__(self) -> Iterator[int]:
        order = self.indices(self.epoch)[self.start :]
        self.epoch += 1
        self.start = 0
        return iter(order)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` whose sample order depends only on ``(seed, epoch)``.

    The sampler is a :class:`SeededSampler` (``loader.sampler``; ``loader.sampler.set_epoch(e, start)``
    to resume). Worker processes are seeded from a generator seeded with ``seed``, so a run with
    augmentation is reproducible from its start; augmentation draws (torch's RNG) are not part of the
    ``(seed, epoch)`` guarantee. Pinned memory when CUDA is available.

    Returns:
        DataLoader yielding ``(images (B, C, H, W), labels (B,) int64)`` for image data sets.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    num_workers = check_int("num_workers", num_workers, low=0)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be a map-style Dataset (with __len__ and __getitem__), got "
                        f"{type(dataset).__name__}")
    sampler = SeededSampler(len(dataset), shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
