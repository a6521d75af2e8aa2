"""Atomic file output: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written file, and a process killed mid-write leaves the old file (or none).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_png(image: Image.Image | np.ndarray, path: str | os.PathLike, palette: list[int] | None = None) -> None:
    """Save a PIL image, or a uint8 (H, W) index array with an optional palette, as PNG atomically."""
    if isinstance(image, np.ndarray):
        img = Image.fromarray(image.astype(np.uint8))
        if palette is not None:
            img = img.convert("P")
            img.putpalette(palette)
    else:
        img = image
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
