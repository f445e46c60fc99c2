"""Atomic file writes (a crash or a full disk leaves the old file or the new one, never half of one) and JSON."""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", durable: bool = False, **open_kw: str) -> Iterator[IO]:
    """Open a temporary sibling of PATH for writing; rename it over PATH only if the block succeeds.

    DURABLE also fsyncs before the rename (for records that must survive a machine crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            e.filename = str(path)  # a failed write or flush names no file; say which one it was
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, path: str | Path) -> None:
    """Write TEXT to PATH atomically: a reader sees the old file or the whole new one."""
    with atomic_file(path) as f:
        f.write(text)


def write_json(obj: Any, path: str | Path) -> None:
    """Write OBJ as JSON atomically (NaN/Inf become null, which every JSON reader accepts)."""
    write_text(json.dumps(finite(obj), indent=2, sort_keys=False) + "\n", path)


def finite(obj: Any) -> Any:
    """OBJ with every non-finite float replaced by None, in nested dicts and lists too."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
