"""Finished runs of a job that did not finish, kept aside so that the job's rerun takes them instead
of training them again (`python -m bench run-cell --resume-dir DIR`; the pipeline passes
results/.resume).

A pipeline job trains many runs (every task, length and seed of one mitigation, by default). When
it is killed part-way -- Ctrl-C, `kill -9`, a lost node, a cluster's time limit -- Snakemake marks
its outputs incomplete and deletes them before it runs the job again, so without this the rerun
retrains every run of the job. With a resume folder, each finished run's record is also written
there (one file per record path) and the job's rerun copies it back instead of training, if and
only if all of these still hold:

- the cached record was made for the same record path and the same run (its `spec` equals the
  spec the rerun would train);
- by the same code: a fingerprint of the bench package's sources (every .py and .cpp file) and
  the torch version, so that an edit to the engine between the kill and the rerun retrains;
- on the same device the rerun would train on (`auto` can resolve differently on another node);
- it is not an 'error' record (an error may be transient: those runs train again).

The records are the files the interrupted job wrote, timings and provenance included: a resumed
run is the earlier process's honest measurement, not a new one. When a job finishes, it deletes
its cached records (its outputs are then complete). A cached file that cannot be read is ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch

from .devices import resolve_device
from .records import write_json_atomic
from .spec import RunSpec

FORMAT = 1
_FINGERPRINT: Optional[str] = None


def code_fingerprint() -> str:
    """sha256 of the bench package's sources (relative path and bytes of every .py / .cpp file,
    in sorted order) and the torch version; computed once per process."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
        for p in sorted(q for q in root.rglob("*") if q.suffix in (".py", ".cpp") and q.is_file()):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


class ResumeCache:
    """The resume folder of one run-cell process (see the module doc)."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.resumed = 0

    def path_for(self, out: str) -> Path:
        key = hashlib.sha256(os.path.normpath(out).encode()).hexdigest()[:24]
        return self.root / f"{key}.json"

    def get(self, out: str, spec) -> Optional[Dict]:
        """The cached record of `out` if it may stand for training `spec` now, else None."""
        p = self.path_for(out)
        if not p.exists():
            return None
        try:
            entry = json.loads(p.read_text())
            rec = entry["record"]
            ok = (entry.get("format") == FORMAT and entry.get("out") == os.path.normpath(out)
                  and entry.get("code") == code_fingerprint() and rec.get("outcome") != "error"
                  and RunSpec.from_dict(rec["spec"]) == spec
                  and rec.get("device") == str(resolve_device(spec.device)))
        except Exception:  # noqa: BLE001 -- unreadable, not a cache entry, device not here: train
            return None
        if ok:
            self.resumed += 1
            return rec
        return None

    def put(self, out: str, rec: Dict) -> None:
        """Keep `rec` (not an error record). Best effort: the record itself is already written, so
        a failure here (a full disk; another job removing the then empty folder between our mkdir
        and our write, retried once) is a warning, never a failed job."""
        if rec.get("outcome") == "error":
            return
        entry = {"format": FORMAT, "out": os.path.normpath(out), "code": code_fingerprint(), "record": rec}
        for attempt in (1, 2):
            try:
                write_json_atomic(self.path_for(out), entry)  # creates the folder
                return
            except OSError as e:
                if attempt == 2:
                    print(f"warning: could not keep {out} in {self.root} for resuming ({e}); "
                          "if this job is interrupted, that run will train again", file=sys.stderr)

    def clear(self, outs: Iterable[str]) -> None:
        """Delete the cached records of `outs` (the job finished), and the folder if empty."""
        for out in outs:
            try:
                self.path_for(out).unlink()
            except FileNotFoundError:
                pass
        try:
            self.root.rmdir()
        except OSError:
            pass
