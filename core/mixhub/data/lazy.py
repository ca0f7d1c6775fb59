"""Lazily loaded images: image folders, tar shards, webdataset shards and image-path CSV tables.

Nothing is decoded when a dataset is built: a *source* lists its files (timm's own readers for
folders and tar files, ``ReaderImageFolder`` / ``ReaderImageInTar``) and knows every label;
``LazyImageDataset`` opens, decodes and transforms one sample at a time, in DataLoader workers.

Augmentation is reproducible per sample: the random draws of sample ``i`` in epoch ``e`` come
from a seed derived from ``(seed, e, i, role)`` (``sample_seed``), not from a worker's running
generator, so a resumed run (or a different worker count) sees exactly the augmentations an
uninterrupted run sees. ``role`` tells anchors (0) from extra samples a plugin asked for.

Length: the four sources (folders, tar, webdataset, CSV paths) share the decoding, the per-sample
seeding and the bad-sample handling of ``LazyImageDataset``.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "BadSample",
    "LazyImageDataset",
    "FolderSource",
    "TarSource",
    "WebDatasetSource",
    "PathSource",
    "sample_seed",
    "seeded",
]


def sample_seed(seed: int, epoch: int, index: int, role: int = 0) -> int:
    """A 63-bit seed for one sample's augmentation, from ``(seed, epoch, index, role)`` only."""
    words = np.random.SeedSequence([seed % (2**63), epoch, index, role]).generate_state(2, np.uint64)
    return int((int(words[0]) << 1 ^ int(words[1])) % (2**63))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's ``random``, NumPy's global and torch's CPU generators seeded with ``seed`` inside
    the block (timm's transforms draw from all three), restored afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    # the CPU generator only: torch.manual_seed also queues a seed for every lazy device module
    # (CUDA, XPU, MTIA), formatting a stack trace each time, which cost a third of a small
    # image's loading time in the DataLoader workers
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@dataclass(frozen=True)
class BadSample:
    """An unreadable sample under ``data.on_bad_sample=skip`` (dropped by the collate function)."""

    index: int
    name: str
    error: str


# =============================================================================== sources
class _Source:
    """Listing of encoded images: ``len``, ``open(i)`` (a binary file object), ``name(i)``, ``targets``."""

    targets: np.ndarray
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def open(self, i: int) -> Any:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError


#: Image file extensions read from folders, tar and webdataset shards (timm lists png/jpg/jpeg only;
#: TIFF is where 16-bit, 32-bit and float images usually live).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


def _register_image_extensions() -> None:
    """Add ``IMAGE_EXTS`` to timm's image extensions (its folder and tar readers list by them)."""
    from timm.data.readers.img_extensions import add_img_extensions, get_img_extensions

    known = get_img_extensions(as_set=True)
    missing = tuple(f".{e}" for e in IMAGE_EXTS if f".{e}" not in known)
    if missing:
        add_img_extensions(missing)


def _check_class_folders(root: Path) -> list[str]:
    """Class sub-folders of ``root`` (sorted as timm sorts them); each must hold an image file."""
    from timm.data.readers.img_extensions import get_img_extensions
    from timm.utils.misc import natural_key

    _register_image_extensions()

    exts = get_img_extensions(as_set=True)
    classes = sorted((p.name for p in root.iterdir() if p.is_dir()), key=natural_key)
    if not classes:
        raise DataError(f"image folder {str(root)!r} has no class sub-folders (expected one folder per class)")
    for c in classes:
        if not any(os.path.splitext(f)[1].lower() in exts for _, _, files in os.walk(root / c, followlinks=True) for f in files):
            raise DataError(f"image folder {str(root)!r}: class folder {str(root / c)!r} holds no image files (remove it or add images)")
    stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if stray:
        raise DataError(f"image folder {str(root)!r}: image file {stray[0]!r} lies outside any class folder")
    return classes


class FolderSource(_Source):
    """One folder per class, listed by timm's ``ReaderImageFolder`` (class map fixed by ``classes``)."""

    def __init__(self, root: Path, classes: list[str] | None = None) -> None:
        from timm.data.readers.reader_image_folder import ReaderImageFolder

        found = _check_class_folders(root)
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DataError(f"image folder {str(root)!r}: class folder {unknown[0]!r} is not a class of the training folder ({', '.join(classes)})")
        self.classes = list(classes if classes is not None else found)
        self.reader = ReaderImageFolder(str(root), class_map={c: i for i, c in enumerate(self.classes)})
        self.root = root
        self.targets = np.fromiter((t for _, t in self.reader.samples), dtype=np.int64, count=len(self.reader.samples))

    def open(self, i: int) -> Any:
        return open(self.reader.samples[i][0], "rb")

    def name(self, i: int) -> str:
        return str(self.reader.samples[i][0])


class TarSource(_Source):
    """Tar shards as timm reads them (``ReaderImageInTar``): a ``.tar`` holding one folder per class,
    or a folder of ``.tar`` files, one per class. Open tar handles are per process."""

    def __init__(self, root: Path) -> None:
        from timm.data.readers.reader_image_in_tar import ReaderImageInTar

        _register_image_extensions()
        try:
            self.reader = ReaderImageInTar(str(root), cache_tarinfo=False)
        except (tarfile.TarError, ValueError, OSError) as exc:  # ValueError: no samples (timm unpacks an empty zip)
            raise DataError(f"tar shards {str(root)!r}: cannot be read as image tar files ({type(exc).__name__}: {exc})") from exc
        self.root = root
        self.targets = np.asarray(self.reader.targets, dtype=np.int64)
        by_index = {v: k for k, v in self.reader.class_name_to_idx.items()}
        self.classes = [by_index[i] for i in range(len(by_index))]
        self._pid = os.getpid()

    def _reset_if_forked(self) -> None:
        # A tar handle opened before the DataLoader forked its workers shares its file offset
        # with them: each process opens its own.
        if self._pid != os.getpid():
            states = [self.reader.tar_state] if self.reader.root_is_tar else list(self.reader.tar_state.values())
            for st in states:
                st.tf = None
                for child in st.children.values():
                    child.tf = None
            self._pid = os.getpid()

    def open(self, i: int) -> Any:
        self._reset_if_forked()
        f, _ = self.reader[i]
        return f

    def name(self, i: int) -> str:
        member = self.reader.samples[i][0].name
        shard = self.reader.samples[i][1]
        return f"{os.path.join(str(self.root), shard) if shard else str(self.root)}:{member}"


def expand_shards(pattern: str) -> list[str]:
    """Shard paths of a webdataset pattern: brace ranges (``shard-{000..009}.tar``), globs, or a folder."""
    import glob

    from braceexpand import braceexpand

    p = Path(pattern).expanduser()
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    out: list[str] = []
    for part in braceexpand(str(p)):
        matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
        out.extend(matches)
    return out


class WebDatasetSource(_Source):
    """webdataset shards (``key.jpg`` + ``key.cls`` members grouped by key) with random access.

    The ``webdataset`` package streams shards as an ``IterableDataset``: no random access, so no
    sampler order, exact mid-epoch resume or dataset partners. Here each shard's tar headers are
    listed once (data members are skipped, only the small ``.cls`` label members are read) and
    samples are read by offset, one at a time, in the workers; the naming convention is the
    webdataset one (the key is the member path up to the first dot of the file name).
    """

    IMAGE_EXTS = IMAGE_EXTS
    LABEL_EXTS = ("cls", "label", "index")

    def __init__(self, pattern: str) -> None:
        self.shards = expand_shards(pattern)
        if not self.shards:
            raise DataError(f"webdataset:{pattern}: no shard matches")
        shard_ids: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        names: list[str] = []
        labels: list[int] = []
        for s_id, shard in enumerate(self.shards):
            if not os.path.isfile(shard):
                raise DataError(f"webdataset shard {shard!r} does not exist")
            try:
                with tarfile.open(shard, mode="r:") as tf:
                    samples: dict[str, dict[str, Any]] = {}
                    order: list[str] = []
                    for ti in tf:
                        if not ti.isfile():
                            continue
                        d, base = os.path.split(ti.name)
                        key, _, ext = base.partition(".")
                        key = os.path.join(d, key)
                        if key not in samples:
                            samples[key] = {}
                            order.append(key)
                        ext = ext.lower()
                        if ext in self.IMAGE_EXTS:
                            samples[key]["image"] = (ti.offset_data, ti.size, ti.name)
                        elif ext in self.LABEL_EXTS:
                            fh = tf.extractfile(ti)
                            raw = fh.read().decode().strip() if fh is not None else ""
                            try:
                                samples[key]["label"] = int(raw)
                            except ValueError:
                                raise DataError(f"webdataset shard {shard!r}: label member {ti.name!r} is not an integer ({raw[:40]!r})") from None
            except tarfile.TarError as exc:
                raise DataError(f"webdataset shard {shard!r} is not a readable tar file: {exc}") from exc
            for key in order:
                entry = samples[key]
                if "image" not in entry:
                    continue  # e.g. a metadata-only member group
                if "label" not in entry:
                    raise DataError(f"webdataset shard {shard!r}: sample {key!r} has no .cls label member")
                off, size, name = entry["image"]
                shard_ids.append(s_id)
                offsets.append(off)
                sizes.append(size)
                names.append(name)
                labels.append(entry["label"])
        if not labels:
            raise DataError(f"webdataset:{pattern}: the shards hold no image samples")
        self.shard_ids = np.asarray(shard_ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.names = names
        raw_labels = np.asarray(labels, dtype=np.int64)
        uniq = np.unique(raw_labels)
        if uniq.min() < 0:
            raise DataError(f"webdataset:{pattern}: negative class label {int(uniq.min())}")
        self.targets = raw_labels
        self.classes = [str(c) for c in range(int(uniq.max()) + 1)]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def open(self, i: int) -> Any:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        s = int(self.shard_ids[i])
        fh = self._handles.get(s)
        if fh is None:
            fh = self._handles[s] = open(self.shards[s], "rb")
        fh.seek(int(self.offsets[i]))
        return io.BytesIO(fh.read(int(self.sizes[i])))

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard_ids[i])]}:{self.names[i]}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class PathSource(_Source):
    """Image files by path with given targets (an image-path CSV table)."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray) -> None:
        self.paths = list(paths)
        self.targets = targets

    def open(self, i: int) -> Any:
        return open(self.paths[i], "rb")

    def name(self, i: int) -> str:
        return self.paths[i]


# =============================================================================== dataset
def to_rgb(im: Any) -> Any:
    """An 8-bit RGB PIL image of ``im``, high-bit-depth modes scaled by their range, not clipped.

    PIL's ``convert("RGB")`` clips 16- and 32-bit pixels to 255 (a 16-bit image turns white), so
    those modes are scaled here as scikit-image's ``img_as_ubyte`` reads their dtype: unsigned
    16-bit (``I;16*``) by 65535, signed 32-bit (``I``, ``I;32*``) by 2**31 - 1 (negatives to 0),
    float (``F``) as intensities in [0, 1] (outside values clipped, NaN to 0). Grey stays grey
    (the value is copied to the three channels). Other modes go through ``convert("RGB")``.
    """
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "I" or mode.startswith("I;"):
        scale = float(2**31 - 1)
    elif mode == "F" or mode.startswith("F;"):
        scale = 1.0
    else:
        return im.convert("RGB")
    a = np.nan_to_num(np.asarray(im, dtype=np.float64) / scale, nan=0.0, posinf=1.0, neginf=0.0)
    grey = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def decode_image(fh: Any, name: str) -> Any:
    """An RGB PIL image, fully decoded (``to_rgb``); any failure is a ``DataError`` naming the file."""
    from PIL import Image

    try:
        with fh, Image.open(fh) as im:
            return to_rgb(im)
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        detail = str(exc).split(" <_io.")[0].splitlines()[0] if str(exc) else ""  # PIL repeats the file as a handle repr
        raise DataError(f"corrupt or unreadable image file {name!r} ({type(exc).__name__}: {detail})") from exc


class LazyImageDataset(Dataset):
    """Samples ``indices`` of a source, decoded and transformed one at a time.

    ``dataset[i]`` gives ``(x, y)``; ``dataset.load(i, epoch, role)`` is what the loader calls,
    with the sample's augmentation seeded from ``(seed, epoch, i, role)``. ``set_epoch`` sets the
    epoch used by ``dataset[i]`` (the core's one-by-one partner fetch in the training process).

    Args:
        source: the listing (``FolderSource``, ``TarSource``, ``WebDatasetSource``, ``PathSource``).
        indices: source positions of this split.
        targets: the split's targets (long class ids, or float regression targets).
        transform: PIL image -> CHW float tensor (timm's, or ``AlbumentationsTransform``).
        seed: the run's seed (augmentation seeds derive from it).
        on_bad_sample: ``"error"`` raises naming the file; ``"skip"`` returns a ``BadSample``
            from ``load`` (the collate function drops it and counts it).
    """

    lazy = True

    def __init__(
        self,
        source: _Source,
        indices: np.ndarray,
        targets: Tensor,
        transform: Any,
        seed: int = 0,
        on_bad_sample: str = "error",
    ) -> None:
        if len(indices) != len(targets):
            raise DataError(f"indices ({len(indices)}) and targets ({len(targets)}) differ in length")
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self._targets = targets
        self.transform = transform
        self.seed = int(seed)
        self.on_bad_sample = on_bad_sample
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def target_tensor(self) -> Tensor:
        return self._targets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def remap_targets(self, table: Tensor) -> None:
        """Class ids ``c`` become ``table[c]`` (``data.classes``; see ``base.apply_class_order``)."""
        self._targets = table[self._targets]

    def name(self, i: int) -> str:
        return self.source.name(int(self.indices[i]))

    def load(self, i: int, epoch: int, role: int = 0) -> tuple[Tensor, Tensor] | BadSample:
        j = int(self.indices[i])
        name = self.source.name(j)
        try:
            try:
                fh = self.source.open(j)
            except (OSError, KeyError, tarfile.TarError) as exc:
                raise DataError(f"unreadable image file {name!r}: {type(exc).__name__}: {exc}") from exc
            img = decode_image(fh, name)
        except DataError as exc:
            if self.on_bad_sample == "skip":
                return BadSample(i, name, str(exc))
            raise DataError(f"{exc}; data.on_bad_sample=skip skips unreadable files (counted and reported per epoch)") from exc
        s = sample_seed(self.seed, epoch, i, role)
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(s)
        with seeded(s):
            x = self.transform(img)
        return x, self._targets[i]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        out = self.load(int(i), self.epoch)
        if isinstance(out, BadSample):
            raise DataError(out.error)
        return out


def split_source(
    source: _Source,
    parts: list[np.ndarray],
    targets: Tensor,
    transforms: list[Any],
    seed: int,
    on_bad_sample: str,
) -> list[LazyImageDataset]:
    """One ``LazyImageDataset`` per index array of ``parts`` (each with its transform)."""
    return [
        LazyImageDataset(source, idx, targets[torch.as_tensor(idx, dtype=torch.long)], tf, seed, on_bad_sample)
        for idx, tf in zip(parts, transforms)
    ]
