"""The sweep config: validation and expansion into grid cells.

A config (config/config.yaml) names tasks with their lengths, mitigations, seeds and the training
settings. `validate(config, schema)` checks it in two passes and returns a `Sweep`:

1. structure, types and bounds against workflow/schemas/config.schema.yaml (`schema_problems`);
2. names and lengths against the registries (`expand`): unknown task, length outside the task's
   range, unknown mitigation or modifier, impossible composition (via `parse_mitigation` and
   `check_for_task`), two spellings of one mitigation, lr/optimizer keys that are not mitigations.

Every problem found in a pass is reported at once, in one `ConfigError` whose lines each name the
key, the problem and the valid choices. The `Sweep` holds the canonical mitigation names and the
grid: one `Cell` per (task, length, mitigation, lr), each trained for every seed.
"""
from __future__ import annotations

import copy
import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .errors import BenchError

DEFAULT_LR = "default"  # the lr label of a cell that uses its recipe's learning rate
_BOOL_TEXT = {"true": True, "yes": True, "false": False, "no": False}
_NULL_TEXT = ("null", "none", "~")  # `--config perf_results=null` arrives as text
INT_KEYS = ("hidden", "batch", "budget", "eval_every", "heldout_size", "threads")

_INT_TEXT = re.compile(r"[+-]?\d+")


class ConfigError(BenchError):
    """A bad config; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"invalid config ({n} problem{'s' if n > 1 else ''}):\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


# -- pass 1: the schema ------------------------------------------------------------------------

def load_schema(schema: Union[str, Path, Mapping]) -> dict:
    if isinstance(schema, Mapping):
        return dict(schema)
    with open(schema) as f:
        return yaml.safe_load(f)


def coerce_numbers(config: Any, schema: Mapping) -> Any:
    """A copy of `config` where text that spells a number stands where the schema wants one
    becomes that number, and integral floats where it wants an integer become ints.

    Why: `snakemake --config seeds=[0,1]` parses nested values as text ('0', '1'), and YAML 1.1
    reads `1e-3` as text. Likewise true/false/yes/no where it wants a boolean, and null/none/~
    where it admits null. Anything else is left for the schema to reject.
    """
    kind = schema.get("type")
    if isinstance(config, dict) and kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in config.items():
            sub = props.get(k, extra if isinstance(extra, Mapping) else None)
            out[k] = coerce_numbers(v, sub) if sub else v
        return out
    if isinstance(config, list) and kind == "array" and isinstance(schema.get("items"), Mapping):
        return [coerce_numbers(v, schema["items"]) for v in config]
    if kind == "integer":
        if isinstance(config, str) and _INT_TEXT.fullmatch(config.strip()):
            return int(config)
        if isinstance(config, float) and config.is_integer():
            return int(config)
    if kind == "boolean" and isinstance(config, str) and config.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[config.strip().lower()]
    if isinstance(kind, list) and "null" in kind and isinstance(config, str) and config.strip().lower() in _NULL_TEXT:
        return None
    if kind == "number" and isinstance(config, str):
        try:
            return float(config)
        except ValueError:
            pass
    return config


def _where(path: Sequence) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _type_name(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return "true/false"
    return {str: "text", int: "an integer", float: "a number", list: "a list",
            dict: "a mapping"}.get(type(v), type(v).__name__)


_WANTED = {"integer": "an integer", "number": "a number", "string": "text (a name)",
           "array": "a list, e.g. [a, b]", "object": "a mapping, e.g. {key: value}", "boolean": "true or false"}


def _maybe(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _glued_hint(e) -> str:
    """A value missing under a key with a colon in it: YAML reads `{rnn:adam}` (no space after the
    colon) as one key 'rnn:adam' with no value -- say so, with the spelling meant."""
    key = e.absolute_path[-1] if e.absolute_path else None
    if e.instance not in (None, "") or not isinstance(key, str) or ":" not in key:
        return ""
    k, v = key.rsplit(":", 1)
    if e.validator == "type" and "array" in ([e.validator_value] if isinstance(e.validator_value, str)
                                             else e.validator_value):
        v = f"[{v}]"
    return (f" (YAML read {key!r} as one key with no value: a space after the colon makes it a key and "
            f"its value, {{{k}: {v}}})")


def _schema_message(e) -> str:
    """One line for a jsonschema ValidationError: where, what, and the valid choices."""
    return _schema_line(e) + _glued_hint(e)


def _schema_line(e) -> str:
    where = _where(e.absolute_path)
    key = f"config key {where!r}" if where else "config"
    v, inst = e.validator_value, e.instance
    if e.validator == "additionalProperties" and v is False:
        valid = sorted(e.schema.get("properties", {}))
        unknown = sorted(set(inst) - set(valid))
        return "; ".join(f"{key}: unknown key {u!r}{_maybe(u, valid)}; valid keys: {', '.join(valid)}"
                         for u in unknown)
    if e.validator == "required":
        missing = [k for k in v if k not in inst]
        desc = {k: e.schema["properties"].get(k, {}).get("description") for k in missing}
        return "; ".join(f"{key}: missing required key {k!r}" + (f" ({desc[k]})" if desc[k] else "")
                         for k in missing)
    if e.validator == "type":
        wanted = " or ".join(_WANTED.get(t, t) for t in ([v] if isinstance(v, str) else v))
        hint = ""
        if isinstance(inst, float) and "integer" in v:
            hint = " (a whole number is needed)"
        return f"{key}: expected {wanted}, got {inst!r} ({_type_name(inst)}){hint}"
    if e.validator == "enum":
        return f"{key}: {inst!r} is not a valid choice{_maybe(inst, v)}; valid choices: {', '.join(map(str, v))}"
    if e.validator == "pattern" and "x-choices" in e.schema:
        return f"{key}: {inst!r} is not a valid choice; valid choices: {', '.join(map(str, e.schema['x-choices']))}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if e.validator in bounds:
        return f"{key}: must be {bounds[e.validator]} {v}, got {inst!r}"
    if e.validator in ("minItems", "minProperties", "minLength"):
        return f"{key}: must not be empty"
    if e.validator == "uniqueItems":
        seen, dups = [], []
        for x in inst:
            (dups if x in seen and x not in dups else seen).append(x)
        return f"{key}: duplicate entries {', '.join(map(repr, dups))}; each value may appear once"
    return f"{key}: {e.message}"


def schema_problems(config: Any, schema: Union[str, Path, Mapping]) -> List[str]:
    """One message per schema violation (empty when the config fits the schema)."""
    from jsonschema import Draft202012Validator

    if not isinstance(config, Mapping):
        return [f"config: expected a mapping of keys to values, got {_type_name(config)}"]
    errors = sorted(Draft202012Validator(load_schema(schema)).iter_errors(dict(config)),
                    key=lambda e: [str(p) for p in e.absolute_path])
    return [_schema_message(e) for e in errors]


def with_defaults(config: Mapping, schema: Union[str, Path, Mapping]) -> dict:
    """A copy of `config` with the schema's top-level defaults filled in."""
    out = copy.deepcopy(dict(config))
    for k, sub in load_schema(schema).get("properties", {}).items():
        if "default" in sub and k not in out:
            out[k] = copy.deepcopy(sub["default"])
    return out


# -- pass 2: the registries and the grid ----------------------------------------------------------

def format_lr(lr: float) -> str:
    """The lr label used in paths and wildcards: repr of the float (0.001, 1e-05)."""
    return repr(float(lr))


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: every seed of (task, length, mitigation, lr)."""

    task: str
    length: int
    mitigation: str  # canonical name
    lr: str  # DEFAULT_LR, or format_lr(value)

    @property
    def lr_value(self) -> Optional[float]:
        return None if self.lr == DEFAULT_LR else float(self.lr)


@dataclass(frozen=True)
class Sweep:
    """A validated config with canonical mitigation names, and the grid it spans."""

    tasks: Dict[str, List[int]]
    mitigations: List[str]  # canonical, in config order
    seeds: List[int]
    hidden: int
    batch: int
    budget: int
    eval_every: int
    heldout_size: int
    device: str
    threads: int
    lr: Dict[str, List[float]]  # canonical mitigation -> learning rates
    optimizer: Dict[str, str]  # canonical mitigation -> optimizer
    job_grouping: str = "mitigation"  # one training job per (mitigation, lr), or per "cell"
    reuse_runs: bool = True  # a job takes back the runs it finished before (results/.resume) instead of training
    seed_groups: bool = True  # a cell's seeds train together in lockstep (bench.train.train_group)
    perf_results: Optional[str] = None  # the perf suite's JSON shown in the report (report only)

    def lr_labels(self, mitigation: str) -> List[str]:
        return [format_lr(v) for v in self.lr[mitigation]] if mitigation in self.lr else [DEFAULT_LR]

    def cells(self) -> Iterator[Cell]:
        for task, lengths in self.tasks.items():
            for length in lengths:
                for m in self.mitigations:
                    for lr in self.lr_labels(m):
                        yield Cell(task, length, m, lr)

    def jobs(self) -> Iterator[Tuple[Dict[str, str], List[Cell]]]:
        """The training jobs: (the job's wildcards, the cells it trains), in the config's order.
        job_grouping "mitigation": one job per (mitigation, lr) trains every task, length and
        seed of it in one process (each process start costs 1-3 s, mostly `import torch`);
        "cell": one job per (task, length, mitigation, lr), all seeds (most parallel; reruns
        touch only the cells that changed)."""
        if self.job_grouping == "cell":
            for c in self.cells():
                yield {"task": c.task, "length": str(c.length), "mitigation": c.mitigation, "lr": c.lr}, [c]
            return
        for m in self.mitigations:
            for lr in self.lr_labels(m):
                yield {"mitigation": m, "lr": lr}, [Cell(t, length, m, lr) for t, length in self.task_lengths()]

    @functools.cached_property
    def _job_costs(self) -> Dict[Tuple[Tuple[str, str], ...], float]:
        """Every training job's rough cost, keyed by its sorted wildcards (jobs() decides which
        cells a job trains)."""
        from .models import parse_mitigation
        from .models.mitigations import step_cost
        from .tasks import make_task

        steps = len(self.seeds) * self.budget
        return {tuple(sorted(w.items())): sum(steps * step_cost(parse_mitigation(c.mitigation),
                                                                make_task(c.task, c.length).seq_len)
                                              for c in cells)
                for w, cells in self.jobs()}

    def job_cost(self, wildcards: Mapping[str, str]) -> float:
        """A training job's rough cost (bench.models.mitigations.step_cost's units, times the steps
        of its runs): the pipeline gives it as the job's priority, so that the dearest jobs start
        first and no long job starts last (longest first). The default sweep's 13 jobs took 24-51 s
        each on this 2-core machine (the four LSTM jobs 44-51 s); replayed on N cores in that order
        they finish in 83 s at N=6 and 70 s at N=8, where a random order takes 95 s / 77 s (median;
        up to 107 s / 83 s); at N=2-4 any order comes within a few seconds of each other."""
        return self._job_costs[tuple(sorted((k, str(v)) for k, v in wildcards.items()))]

    def job_priority(self, wildcards: Mapping[str, str]) -> float:
        """The train job's Snakemake priority: its cost as a share of the dearest job's, 0-100
        (small numbers for the scheduler's integer program; the full sweep's raw costs reach 1e9)."""
        return round(100.0 * self.job_cost(wildcards) / self._dearest_job, 3)

    @functools.cached_property
    def _dearest_job(self) -> float:
        return max(self._job_costs.values())

    def task_lengths(self) -> List[Tuple[str, int]]:
        """Every (task, length) of the sweep, in the config's order: the cells of one
        mitigation's job with job_grouping "mitigation"."""
        return [(t, length) for t, lengths in self.tasks.items() for length in lengths]

    def train_flags(self, mitigation: str, lr: str) -> str:
        """The `bench run-cell` flags that shape a record (not task, length, seeds, device,
        threads): when they change, the cell's records are stale."""
        flags = (f"--hidden {self.hidden} --batch {self.batch} --budget {self.budget} "
                 f"--eval-every {self.eval_every} --heldout-size {self.heldout_size}")
        if lr != DEFAULT_LR:
            flags += f" --lr {lr}"
        if mitigation in self.optimizer:
            flags += f" --optimizer {self.optimizer[mitigation]}"
        return flags

    def to_config(self) -> dict:
        """The effective config, plain data: it validates against the schema and expands to
        this same sweep."""
        return {"tasks": {t: list(ls) for t, ls in self.tasks.items()}, "mitigations": list(self.mitigations),
                "seeds": list(self.seeds), "hidden": self.hidden, "batch": self.batch, "budget": self.budget,
                "eval_every": self.eval_every, "heldout_size": self.heldout_size, "device": self.device,
                "threads": self.threads, "lr": {m: list(v) for m, v in self.lr.items()},
                "optimizer": dict(self.optimizer), "job_grouping": self.job_grouping,
                "reuse_runs": self.reuse_runs, "seed_groups": self.seed_groups, "perf_results": self.perf_results}


def _per_mitigation(cfg: dict, key: str, canon: Dict[str, str], problems: List[str]) -> Dict[str, Any]:
    """Re-key the `lr` or `optimizer` mapping by canonical mitigation name; every key must be
    one of the config's mitigations (in any spelling of it)."""
    from .models import parse_mitigation

    out: Dict[str, Any] = {}
    spelled: Dict[str, str] = {}
    valid = list(dict.fromkeys(canon.values()))
    for k, v in cfg[key].items():
        try:
            name = parse_mitigation(k).name
        except BenchError:
            name = None
        if name is None or name not in valid:
            problems.append(f"config key '{key}': {k!r} is not one of the mitigations{_maybe(k, valid)}; "
                            f"valid keys: {', '.join(valid)}")
            continue
        if name in out:
            problems.append(f"config key '{key}': {spelled[name]!r} and {k!r} are the same mitigation "
                            f"({name!r}); keep one")
            continue
        out[name], spelled[name] = v, k
    return out


def expand(config: Mapping) -> Sweep:
    """Check a schema-valid config (defaults filled in) against the registries; return the Sweep.
    Raises ConfigError listing every problem."""
    from .models import parse_mitigation
    from .models.mitigations import check_for_task
    from .tasks import TASKS, make_task

    cfg = dict(config)
    problems: List[str] = []
    listing = " (see `python -m bench list`)"

    tasks: Dict[str, List[int]] = {}
    instances = []  # (task name, length, Task)
    for name, lengths in cfg["tasks"].items():
        if name not in TASKS:
            problems.append(f"config key 'tasks': unknown task {name!r}{_maybe(name, TASKS.names())}; "
                            f"valid tasks: {', '.join(TASKS.names())}{listing}")
            continue
        for i, length in enumerate(lengths):
            try:
                instances.append((name, length, make_task(name, length)))
            except BenchError as e:
                problems.append(f"config key 'tasks.{name}[{i}]': {e}")
        tasks[name] = list(lengths)

    canon: Dict[str, str] = {}  # as written -> canonical
    mits = {}  # canonical -> (index in the config, Mitigation)
    for i, written in enumerate(cfg["mitigations"]):
        try:
            mit = parse_mitigation(written)
        except BenchError as e:
            hint = ""
            if "unknown mitigation" in str(e):
                hint = (f"{_maybe(written.split('+')[0], [n for n in _recipes()])}; a mitigation is "
                        f"<recipe>[+<modifier>:<value>]..., e.g. lstm+clipnorm:1")
            problems.append(f"config key 'mitigations[{i}]': {e}{hint}")
            continue
        if mit.name in mits:
            first = next(w for w, c in canon.items() if c == mit.name)
            problems.append(f"config key 'mitigations': {first!r} and {written!r} are the same mitigation "
                            f"({mit.name!r}); keep one")
            continue
        canon[written], mits[mit.name] = mit.name, (i, mit)
    for i, mit in mits.values():
        for name, length, task in instances:
            try:
                check_for_task(mit, task.seq_len)
            except BenchError as e:
                problems.append(f"config key 'mitigations[{i}]': {e} (task {name!r} at length {length}: "
                                f"{task.length_meaning})")

    if cfg["eval_every"] > cfg["budget"]:
        problems.append(f"config key 'eval_every': {cfg['eval_every']} is more than budget ({cfg['budget']}); "
                        f"runs would be evaluated only at their end")
    lr = _per_mitigation(cfg, "lr", canon, problems)
    optimizer = _per_mitigation(cfg, "optimizer", canon, problems)
    perf_results = cfg.get("perf_results")
    if perf_results is not None and not Path(perf_results).is_file():
        problems.append(f"config key 'perf_results': no file {perf_results!r} (from {Path.cwd()}); run the perf "
                        f"suite first (`python -m pytest perf --benchmark-json={perf_results} "
                        f"--benchmark-timer=time.process_time`, perf/README.md) or set perf_results: null")
    if problems:
        raise ConfigError(problems)
    return Sweep(tasks=tasks, mitigations=list(mits), seeds=[int(s) for s in cfg["seeds"]],
                 **{k: int(cfg[k]) for k in INT_KEYS}, device=cfg["device"],
                 lr={m: [float(x) for x in v] for m, v in lr.items()}, optimizer=optimizer,
                 job_grouping=cfg.get("job_grouping", "mitigation"), reuse_runs=bool(cfg.get("reuse_runs", True)),
                 seed_groups=bool(cfg.get("seed_groups", True)), perf_results=perf_results)


def _recipes() -> List[str]:
    from .models import MITIGATIONS

    return MITIGATIONS.names()


def validate(config: Mapping, schema: Union[str, Path, Mapping]) -> Sweep:
    """Both passes: the schema (after `coerce_numbers`, with its defaults), then `expand`."""
    schema = load_schema(schema)
    cfg = coerce_numbers(config, schema)
    problems = schema_problems(cfg, schema)
    if problems:
        raise ConfigError(problems)
    return expand(with_defaults(cfg, schema))


def write_yaml(data: Mapping, path: Union[str, Path], log: Optional[Union[str, Path]] = None) -> None:
    """Write `data` as YAML to `path`; with `log`, note there what was written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(dict(data), f, sort_keys=False, default_flow_style=None)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"wrote {path}: keys {', '.join(map(str, data))}\n")
