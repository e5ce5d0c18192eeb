"""Mitigations: base recipes and composable modifiers, named as

    <recipe>[+<modifier>:<value>]...        e.g.  rnn   lstm+clipnorm:1   rnn+tbptt:20+clipnorm:1

A recipe fixes the cell, its initialization and its default optimizer and learning rate (from
the literature, overridable per run). A modifier applies to any recipe unless stated:
clipnorm:<max> (global-norm clipping, Pascanu et al. 2013), clipvalue:<v> (element-wise
clipping), tbptt:<k> (truncated BPTT: detach the state every k steps), radius:<rho> (rescale
the recurrent matrix to spectral radius rho; single-matrix recurrences only).
Each modifier appears at most once; their order does not matter (the canonical name sorts them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..errors import BenchError
from ..registry import Registry


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # rnn_tanh | rnn_relu | lstm | gru
    norm: Optional[str]  # None | "bn" | "ln"
    init: str  # key into seqmodel.INITS
    optimizer: str
    lr: float
    description: str
    reference: str


@dataclass(frozen=True)
class Modifier:
    name: str
    kind: type  # int or float
    description: str
    min_value: float
    single_matrix_only: bool = False


MITIGATIONS: Registry = Registry("mitigation")
MODIFIERS: Registry = Registry("modifier")

_RECIPES = [
    Recipe("rnn", "rnn_tanh", None, "default", "adam", 1e-2,
           "tanh RNN, PyTorch default init: the control",
           "Elman RNN; Pascanu et al. 2013 used SGD 0.01 (default here: Adam 1e-2, the suite's common default for small budgets)"),
    Recipe("rnn_orth", "rnn_tanh", None, "orthogonal", "adam", 1e-2,
           "tanh RNN with orthogonal recurrent init",
           "Saxe et al. 2014; Henaff et al. 2016"),
    Recipe("irnn", "rnn_relu", None, "identity", "adam", 1e-3,
           "ReLU RNN, identity recurrent init, zero biases, small input weights (IRNN)",
           "Le, Jaitly & Hinton 2015 (SGD with a small learning rate and clipping; here Adam 1e-3, compose +clipnorm:1 for their clipping)"),
    Recipe("lstm", "lstm", None, "lstm_forget1", "adam", 1e-2,
           "LSTM, forget-gate bias 1 (sum of PyTorch's two bias vectors)",
           "Hochreiter & Schmidhuber 1997; Gers et al. 2000; Jozefowicz et al. 2015"),
    Recipe("lstm_chrono", "lstm", None, "lstm_chrono", "adam", 1e-2,
           "LSTM with chrono init: b_f ~ log U[1, T_max-1], b_i = -b_f",
           "Tallec & Ollivier 2018 (T_max = the task's sequence length)"),
    Recipe("gru", "gru", None, "default", "adam", 1e-2,
           "GRU, PyTorch default init", "Cho et al. 2014"),
    Recipe("bn_rnn", "rnn_tanh", "bn", "bn_identity", "rmsprop", 1e-3,
           "tanh RNN with recurrent batch norm, per-time-step statistics, gain 0.1",
           "Cooijmans et al. 2016 recipe (RMSProp 1e-3, identity W_hh) on a tanh cell"),
    Recipe("bn_lstm", "lstm", "bn", "bn_identity", "rmsprop", 1e-3,
           "LSTM with recurrent batch norm (BN-LSTM), per-time-step statistics, gain 0.1",
           "Cooijmans et al. 2016 (RMSProp 1e-3, identity W_hh; compose +clipnorm:1 for their clipping)"),
    Recipe("ln_rnn", "rnn_tanh", "ln", "default", "adam", 1e-2,
           "tanh RNN with layer norm on the summed pre-activation", "Ba et al. 2016"),
    Recipe("ln_lstm", "lstm", "ln", "lstm_forget1", "adam", 1e-2,
           "LSTM with layer norm on W_x x, W_h h and c", "Ba et al. 2016"),
]
for _r in _RECIPES:
    MITIGATIONS.register(_r.name, _r.description)(_r)

for _m in [
    Modifier("clipnorm", float, "clip the global gradient norm at <max> (per model)", 0.0),
    Modifier("clipvalue", float, "clip each gradient element to [-v, v]", 0.0),
    Modifier("tbptt", int, "truncated BPTT: detach the hidden state every <k> steps", 1),
    Modifier("radius", float, "rescale the recurrent matrix to spectral radius <rho> at init", 0.0,
             single_matrix_only=True),
]:
    MODIFIERS.register(_m.name, _m.description)(_m)


@dataclass(frozen=True)
class Mitigation:
    recipe: Recipe
    modifiers: Tuple[Tuple[str, float], ...] = field(default_factory=tuple)

    def get(self, name: str, default=None):
        return dict(self.modifiers).get(name, default)

    @property
    def name(self) -> str:
        parts = [self.recipe.name] + [f"{k}:{_fmt(v)}" for k, v in self.modifiers]
        return "+".join(parts)

    def describe(self) -> Dict:
        d = {"recipe": self.recipe.name, "family": self.recipe.family, "norm": self.recipe.norm,
             "init": self.recipe.init}
        for m in MODIFIERS.names():
            d[m] = self.get(m)
        return d


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v)).rstrip("0").rstrip(".") if "e" not in repr(float(v)) else repr(float(v))


def parse_mitigation(name: str) -> Mitigation:
    """Parse `recipe+mod:value+...`; a BenchError names the problem and the valid choices."""
    if not isinstance(name, str) or not name.strip():
        raise BenchError(f"mitigation must be a non-empty string like 'lstm+clipnorm:1', got {name!r}")
    parts = name.strip().split("+")
    recipe = MITIGATIONS.get(parts[0])
    mods: Dict[str, float] = {}
    for p in parts[1:]:
        key, sep, raw = p.partition(":")
        if key not in MODIFIERS:
            raise BenchError(
                f"in mitigation {name!r}: unknown modifier {key!r}; valid modifiers: "
                + ", ".join(f"{m}:<value>" for m in MODIFIERS.names())
            )
        mod = MODIFIERS.get(key)
        if not sep or not raw:
            raise BenchError(f"in mitigation {name!r}: modifier {key!r} needs a value, e.g. {key}:{'20' if mod.kind is int else '1'}")
        if key in mods:
            raise BenchError(f"in mitigation {name!r}: modifier {key!r} given twice")
        try:
            value = mod.kind(raw)
            if mod.kind is int and str(value) != raw.strip():
                raise ValueError
        except ValueError:
            raise BenchError(f"in mitigation {name!r}: {key} needs {'an integer' if mod.kind is int else 'a number'}, got {raw!r}") from None
        if not math.isfinite(value) or (value < mod.min_value if mod.kind is int else value <= mod.min_value):
            raise BenchError(f"in mitigation {name!r}: {key} must be {'>= ' + str(mod.min_value) if mod.kind is int else '> 0'}, got {raw}")
        if mod.single_matrix_only and recipe.family not in ("rnn_tanh", "rnn_relu"):
            ok = [r for r in MITIGATIONS.names() if MITIGATIONS.get(r).family in ("rnn_tanh", "rnn_relu")]
            raise BenchError(
                f"impossible composition {name!r}: {key} rescales a single recurrent matrix, but "
                f"{recipe.name!r} is gated ({recipe.family}); {key} applies to: {', '.join(ok)}"
            )
        mods[key] = value
    return Mitigation(recipe, tuple(sorted(mods.items())))


def check_for_task(mit: Mitigation, seq_len: int) -> None:
    """Compositions that make no sense for a task of `seq_len` steps."""
    k = mit.get("tbptt")
    if k is not None and k >= seq_len:
        raise BenchError(
            f"impossible composition {mit.name!r} for a sequence of {seq_len} steps: tbptt:{k} "
            f"would never truncate; choose k < {seq_len}"
        )


# A training step's rough cost in units of one plain tanh RNN time step (hidden 32, batch 64, on
# the CPU): a fixed part per step (batch, loss, optimizer, bookkeeping: ~50 units) plus one
# weight per time step by cell -- fitted loosely to the default sweep's run records (AMD EPYC,
# 2026-12-05: ~0.7 ms a step, ~13 us a time step for the tanh RNN; the GRU ~1.3x, the LSTMs 3-4x,
# the normalized RNNs ~1.2x). Only the ORDER of jobs rests on it (the pipeline starts the
# dearest training jobs first, bench.config.Sweep.job_cost); nothing measured or reported does.
STEP_FIXED_COST = 50.0
TIMESTEP_COST = {("rnn_tanh", None): 1.0, ("rnn_relu", None): 1.0, ("gru", None): 1.3, ("lstm", None): 3.5,
                 ("rnn_tanh", "bn"): 1.2, ("rnn_tanh", "ln"): 1.2, ("lstm", "bn"): 3.5, ("lstm", "ln"): 3.5}


def step_cost(mit: Mitigation, seq_len: int) -> float:
    """A training step's rough cost on sequences of `seq_len` steps (STEP_FIXED_COST's units)."""
    r = mit.recipe
    return STEP_FIXED_COST + TIMESTEP_COST.get((r.family, r.norm), 3.5) * seq_len
