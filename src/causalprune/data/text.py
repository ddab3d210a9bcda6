"""Character-level text: `pysrc`, the Python standard library's own source files.

Real text that ships with every Python, read offline from the interpreter running the package
(``sysconfig.get_paths()["stdlib"]``). The ``*.py`` files are sorted by their path under that folder
and each file goes, whole, to one split by a fixed hash of its path (CRC-32 mod 20: 1 → val, 2 → probe,
3 → test, the rest → train; about 85 / 5 / 5 / 5 %), so no file is split between two sets and the
split never changes with the seed. Each split's files are concatenated in path order, up to its share of
``max_chars`` (train 85 %, the others 5 % each), encoded over a fixed 98-symbol vocabulary (tab, newline,
printable ASCII; 0 stands for any other character) and cut into non-overlapping windows: inputs
``ids[i·T : i·T + T]`` and targets shifted by one, ``ids[i·T + 1 : i·T + T + 1]``, T = ``block_size``.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import numpy as np
import torch

#: Symbols of the vocabulary, id 1 onwards; id 0 is any other character.
SYMBOLS = "\t\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(SYMBOLS) + 1  # 98
#: Share of `max_chars` each split may hold.
SHARES = {"train": 0.85, "val": 0.05, "probe": 0.05, "test": 0.05}
_BUCKET = {1: "val", 2: "probe", 3: "test"}
_SKIP = ("site-packages", "dist-packages")

_TABLE = np.zeros(128, dtype=np.int64)
for _i, _c in enumerate(SYMBOLS, start=1):
    _TABLE[ord(_c)] = _i


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """List the ``*.py`` files under `root` (None: this interpreter's standard library), sorted by relative path."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = [p for p in base.rglob("*.py") if p.is_file() and not any(s in p.relative_to(base).parts for s in _SKIP)]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def split_of(relative_path: str) -> str:
    """Return the split (train, val, probe or test) that the file at `relative_path` belongs to."""
    return _BUCKET.get(zlib.crc32(relative_path.encode()) % 20, "train")


def encode(text: str) -> torch.Tensor:
    """Encode `text` as int64 ids over `SYMBOLS` (0 for any other character)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where(cp < 128, _TABLE[np.minimum(cp, 127)], 0)
    return torch.from_numpy(ids)


def decode(ids: torch.Tensor) -> str:
    """Return the text of `ids` (id 0 shown as U+FFFD)."""
    return "".join(SYMBOLS[i - 1] if i > 0 else "\ufffd" for i in ids.tolist())


def split_texts(max_chars: int, root: str | Path | None = None) -> dict[str, tuple[str, list[str]]]:
    """Return split → (its text, the relative paths of its files), each text at most its share of `max_chars`."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    budget = {s: int(share * max_chars) for s, share in SHARES.items()}
    parts: dict[str, list[str]] = {s: [] for s in SHARES}
    names: dict[str, list[str]] = {s: [] for s in SHARES}
    used = dict.fromkeys(SHARES, 0)
    for path in stdlib_files(base):
        if all(used[s] >= budget[s] for s in SHARES):
            break
        rel = path.relative_to(base).as_posix()
        split = split_of(rel)
        room = budget[split] - used[split]
        if room <= 0:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")[:room]
        parts[split].append(text)
        names[split].append(rel)
        used[split] += len(text)
    return {s: ("".join(parts[s]), names[s]) for s in SHARES}


def windows(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut `ids` into non-overlapping (inputs, next-character targets) windows of `block_size`, each (N, T)."""
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1 : n * block_size + 1].reshape(n, block_size)
    return x.contiguous(), y.contiguous()


def load_pysrc_splits(max_chars: int = 1_000_000, block_size: int = 64,
                      root: str | Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Return split → (inputs, targets) windows of the standard library's source (see the module's docstring).

    Raises:
        ValueError: if a split's text cannot hold one window of `block_size` (+1 target).
    """
    if block_size < 1:
        raise ValueError(f"model.block_size must be >= 1, got {block_size}")
    out = {}
    for split, (text, _) in split_texts(max_chars, root).items():
        if len(text) < block_size + 1:
            need = int((block_size + 1) / SHARES[split]) + 1
            raise ValueError(f"pysrc: the {split} split holds {len(text)} characters, fewer than one window of "
                             f"model.block_size {block_size} + 1; raise data.max_chars (>= {need}) or lower "
                             "model.block_size")  # fmt: skip
        out[split] = windows(encode(text), block_size)
    return out
