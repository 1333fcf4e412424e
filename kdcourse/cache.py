"""One checksummed, atomic cache for everything the course trains or computes once.

A cached file ``X.pt`` / ``X.npz`` / ``X.npy`` is written atomically (temporary file, then
rename) and described by a sidecar record ``X.json`` holding its SHA-256 and the recipe that
made it. A reader verifies both before trusting the file: a corrupt, truncated, stale or
mismatching file is rebuilt by the caller, never loaded. Used by teachers, data (MNIST-1D),
teacher outputs, the language models of notebook 08 and the synthesised sets of notebook 09.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .utils import atomic_write_bytes, sha256_file

__all__ = ["recipe_key", "record_path", "write_record", "write_verified", "read_record", "save_state", "load_state"]


def recipe_key(recipe: dict) -> str:
    """A short stable key (16 hex digits of SHA-256) of a JSON-able recipe, independent of key order."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def record_path(path: str | Path) -> Path:
    """The sidecar record of a cached file: the same name with the suffix ``.json``."""
    return Path(path).with_suffix(".json")


def write_record(path: str | Path, record: dict | None = None) -> dict:
    """Write the sidecar record of the (complete) file `path`: ``record`` + its ``sha256``; returns it."""
    record = {**(record or {}), "sha256": sha256_file(path)}
    atomic_write_bytes(record_path(path), json.dumps(record, indent=1).encode())
    return record


def write_verified(path: str | Path, data: bytes, record: dict | None = None) -> dict:
    """Write `data` to `path` atomically, then its record (``record`` + ``sha256``); returns the record.

    The record is written second: a crash in between leaves a file without a matching record,
    which `read_record` rejects.
    """
    atomic_write_bytes(path, data)
    return write_record(path, record)


def read_record(path: str | Path, *, expect: dict | None = None) -> dict:
    """The record of the cached file `path` after checking its checksum and the `expect`ed entries.

    Raises FileNotFoundError when the file or its record is missing, ValueError (naming the file)
    when the record is unreadable, the checksum differs or an entry of `expect` does not match.
    """
    path = Path(path)
    meta_path = record_path(path)
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"no cached file {path} with its record {meta_path.name}")
    try:
        record = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"the record of cached {path.name} is unreadable ({err})") from err
    if not isinstance(record, dict) or record.get("sha256") != sha256_file(path):
        raise ValueError(f"checksum mismatch for cached {path.name} (file corrupt or changed)")
    for k, v in (expect or {}).items():
        if record.get(k) != v:
            raise ValueError(f"cached {path.name} was made with another {k} than the one requested")
    return record


def save_state(model: nn.Module, path: str | Path, record: dict | None = None) -> dict:
    """Save `model`'s state_dict to `path` with `write_verified`; returns the record."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return write_verified(path, buf.getvalue(), record)


def load_state(model: nn.Module, path: str | Path, *, expect: dict | None = None, what: str = "cache",
               then: str = "rebuilding it") -> dict | None:
    """Load a verified checkpoint into `model` (strict) and return its record; None if there is none.

    An unusable file (corrupt, changed, another recipe, wrong shapes) gives a warning naming it,
    the problem and what happens `then`, and None, so the caller rebuilds it.
    """
    path = Path(path)
    if not path.exists() and not record_path(path).exists():
        return None
    try:
        record = read_record(path, expect=expect)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return record
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
        warnings.warn(f"{what} {path.name} is unusable ({err}); {then}", stacklevel=3)
        return None
