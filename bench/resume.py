"""Finished runs kept aside, so that a job that runs again takes them back instead of training them
again (`python -m bench run-cell --resume-dir DIR`; the pipeline passes results/.resume).

A pipeline job trains many runs (every task, length and seed of one mitigation, by default), and
Snakemake deletes a job's outputs before it runs the job again. That happens when the job was
killed part-way (Ctrl-C, `kill -9`, a lost node, a cluster's time limit: its outputs are
incomplete), and when the sweep grew: a new length or seed is a new output of every mitigation's
job. Without this, either retrains every run of the job. With a resume folder, each finished
run's record is also written there (one file per record path, kept after the job finishes), and
a job copies it back instead of training, if and only if all of these still hold:

- the kept record was made for the same record path and the same run (its `spec` equals the
  spec the job would train);
- by the same code: a fingerprint of the bench package's sources (every .py and .cpp file) and
  the torch version, so that an edit to the engine retrains;
- on the same device the job would train on (`auto` can resolve differently on another node),
  and the same kind of machine: the record's `provenance.device_name` (the CPU model, or the
  GPU's name) equals this machine's, so that no timing measured on another kind of hardware
  comes back;
- it is not an 'error' record (an error may be transient: those runs train again).

The records are the files the earlier process wrote, timings and provenance included: a run taken
back is the earlier process's honest measurement, not a new one. It gains one field,
`provenance.taken_back_utc` (when it was taken back), so that the report can leave the job out of
the pipeline-overhead share (its run times were not spent in that job). A kept file that cannot be
read or was made by other code is deleted when a job looks it up; entries of runs that left the
sweep stay until `results/.resume` is deleted (any time; it only costs retraining). `--reuse no`
(the pipeline's `reuse_runs: false`) trains every run and refreshes the kept records: the way to
measure again on purpose.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .devices import resolve_device
from .provenance import machine_name
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
        self._here: Dict[str, Tuple[str, str]] = {}  # device name -> (resolved device, machine_name)

    def _device_here(self, name: str) -> Tuple[str, str]:
        """The device `name` resolves to here and its hardware's name, once per name (a job's runs
        share one device)."""
        if name not in self._here:
            device = resolve_device(name)
            self._here[name] = (str(device), machine_name(device))
        return self._here[name]

    def path_for(self, out: str) -> Path:
        key = hashlib.sha256(os.path.normpath(out).encode()).hexdigest()[:24]
        return self.root / f"{key}.json"

    def get(self, out: str, spec) -> Optional[Dict]:
        """The kept record of `out` if it may stand for training `spec` now, else None. An entry
        that cannot be read, or that this code can never use (another format or code
        fingerprint), is deleted."""
        p = self.path_for(out)
        if not p.exists():
            return None
        try:
            entry = json.loads(p.read_text())
            rec = entry["record"]
            current = entry.get("format") == FORMAT and entry.get("code") == code_fingerprint()
        except Exception:  # noqa: BLE001 -- unreadable, not an entry
            current = False
        if not current:
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        try:
            device, machine = self._device_here(spec.device)
            ok = (entry.get("out") == os.path.normpath(out) and rec.get("outcome") != "error"
                  and RunSpec.from_dict(rec["spec"]) == spec and rec.get("device") == device
                  and (rec.get("provenance") or {}).get("device_name") == machine)
        except Exception:  # noqa: BLE001 -- a malformed record, the device not here: train
            return None
        if not ok:
            return None
        self.resumed += 1
        rec.setdefault("provenance", {})["taken_back_utc"] = (
            datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        return rec

    def put(self, out: str, rec: Dict) -> None:
        """Keep `rec` (not an error record). Best effort: the record itself is already written, so
        a failure here (a full disk, say) is a warning, never a failed job."""
        if rec.get("outcome") == "error":
            return
        entry = {"format": FORMAT, "out": os.path.normpath(out), "code": code_fingerprint(), "record": rec}
        try:
            write_json_atomic(self.path_for(out), entry)  # creates the folder
        except OSError as e:
            print(f"warning: could not keep {out} in {self.root} for resuming ({e}); "
                  "if this job runs again, that run will train again", file=sys.stderr)
