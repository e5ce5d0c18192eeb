"""Reading and writing run records: one JSON file per run, written atomically."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Dict

from .errors import BenchError

OUTCOMES = ("solved", "unsolved", "diverged", "error")


def _clean(o):
    """JSON has no NaN/inf: store them as null (the outcome says what happened)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json_atomic(path, obj) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a reader
    sees the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, allow_nan=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_record(path) -> Dict:
    """Load and check one record; a corrupt or partial file raises BenchError naming it."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"corrupt or partial run record {path}: {e}") from None
    if not isinstance(rec, dict) or "spec" not in rec or rec.get("outcome") not in OUTCOMES:
        raise BenchError(f"corrupt run record {path}: missing 'spec' or a valid 'outcome' ({', '.join(OUTCOMES)})")
    if rec["outcome"] != "error":
        for key in ("final", "baseline", "timing", "diagnostics", "grad_norm", "provenance"):
            if key not in rec:
                raise BenchError(f"corrupt run record {path}: missing {key!r}")
    return rec
