"""The native kernel of the recurrences' time loops on the CPU (normlstm.cpp: the normalized cells
bn_lstm, ln_lstm, bn_rnn, ln_rnn; and the plain tanh / ReLU RNN and the GRU, which PyTorch's CPU
build runs one autograd node per operation and step), built on first use.

`kernel()` returns the compiled module, or None -- then normseq runs its TorchScript / Python loops
and the plain RNN / GRU run nn.RNN / nn.GRU (the same functions, slower; results equal to
rounding). None when:
- BENCH_NORMSEQ_NATIVE=0;
- it cannot be built here (no C++ compiler or ninja, a read-only cache, ...): said once, with
  the reason, as a warning.

Built once per machine (~1 minute on 2 cores) with torch.utils.cpp_extension into
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), under a name that carries the CPU's
vector extension (AVX2 builds use -mavx2 -mfma: a binary built on one node is never loaded on a
node without them), the torch and Python versions and a hash of the source and flags. Later
processes import that built library directly (milliseconds; torch's loader would first run
ninja's up-to-date check, 0.25 s per process here, and rebuild whenever the same source lies at
another path, i.e. in another checkout). Only a library whose build finished is imported (a stamp
written after it, matching its size and time); anything else is rebuilt from scratch. Processes that
start together (pipeline jobs) wait for one build under an OS file lock, which the OS releases if
the building process dies (a job killed mid-build does not leave the others waiting forever).
`backend()` names what ran ("native-avx2", "native-generic", "torchscript", "python"), for
provenance.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("normlstm.cpp")
_STATE: dict = {}


def _flags():
    cap = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    avx2 = cap.upper().startswith("AVX")
    return ("avx2" if avx2 else "generic"), ["-O3", "-fno-trapping-math", "-fno-math-errno"] + (["-mavx2", "-mfma"] if avx2 else [])


def enabled() -> bool:
    from ..runtime import env_choice

    return env_choice("BENCH_NORMSEQ_NATIVE", ("0", "1"), "1") == "1"


def kernel():
    """The compiled module (forward, backward), or None (see the module's docstring)."""
    if not enabled():
        return None
    if "mod" not in _STATE:
        _STATE["mod"] = _build()
    return _STATE["mod"]


NATIVE_FAMILIES = ("rnn_tanh", "rnn_relu", "gru")  # plain recurrences run by the kernel on the CPU


def needed(mitigation: str, device) -> bool:
    """Whether training `mitigation` on `device` (a torch.device) runs the kernel."""
    from .mitigations import MITIGATIONS

    recipe = MITIGATIONS.get(str(mitigation).strip().split("+")[0])
    return (recipe is not None and (recipe.norm is not None or recipe.family in NATIVE_FAMILIES)
            and device.type == "cpu")


def prepare(mitigation: str, device: torch.device) -> None:
    """Build or load the kernel now if training `mitigation` on `device` (resolved) will use it
    (train() calls this before its clock starts: the one-time build is not a run's time)."""
    if needed(mitigation, device):
        kernel()


def build_dir() -> Path:
    """Where the kernel is built: one folder per (vector extension, torch, Python, source and
    flags), so a changed source or a different interpreter never loads a stale library."""
    tag, flags = _flags()
    key = hashlib.sha256(_SRC.read_bytes() + " ".join(flags).encode()).hexdigest()[:10]
    name = (f"bench_normlstm_{tag}_torch{torch.__version__.split('+')[0].replace('.', '_')}"
            f"_py{sys.version_info[0]}{sys.version_info[1]}_{key}")
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / name


def uses_norm_cells(model) -> bool:
    from .cells import NormRecurrence

    return any(isinstance(m, NormRecurrence) for m in model.modules())


def recurrence_backend(model, device=None) -> str:
    """What ran the time loops of `model`'s recurrence on `device` in this process: "native-avx2" /
    "native-generic" (the kernel), "torchscript" / "python" (the normalized cells' fallbacks), or
    "torch" (PyTorch's own module: nn.LSTM everywhere, nn.RNN / nn.GRU off the CPU or without the
    kernel)."""
    from .cells import FusedRecurrence

    if uses_norm_cells(model):
        return backend(device)
    rec = [m for m in model.modules() if isinstance(m, FusedRecurrence)]
    # the recurrence's own test, on its weights (built or loaded when it was constructed on the CPU)
    if rec and _STATE.get("mod") is not None and rec[0].native(next(rec[0].parameters())):
        return "native-" + _flags()[0]
    return "torch"


def backend(device=None) -> str:
    """What runs the normalized cells' loops of a float32 model on `device` (default: the CPU) in
    this process: "native-avx2" / "native-generic" (the kernel), else "torchscript" once the
    LSTM loops were compiled, else "python"; builds nothing."""
    if device is not None and torch.device(device).type != "cpu":
        return "python"
    if _STATE.get("mod") is not None:
        return "native-" + _flags()[0]
    from . import normseq

    return "torchscript" if normseq._JIT.get("_lstm_forward_loop") is not None else "python"


def _ninja_on_path():
    """torch's builder runs `ninja` from PATH: add the PyPI package's (a dependency) if it has one."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _build():
    _, flags = _flags()
    build = build_dir()
    name = build.name
    try:
        _ninja_on_path()
        build.mkdir(parents=True, exist_ok=True)
        with open(build / "bench.flock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies
            try:
                stale = build / "lock"  # torch's own baton: only a dead builder can have left it
                if stale.exists():
                    stale.unlink()
                built, stamp = build / f"{name}.so", build / f"{name}.so.complete"
                if built.exists() and stamp.exists() and stamp.read_text() == _stamp(built):
                    mod = _import_built(name, built)
                    if mod is not None:
                        return mod
                if built.exists() or any(build.glob("*.o")):
                    # Not known complete: a build killed mid-way can leave a truncated library
                    # (importing it kills the process with SIGBUS) or object file, which ninja
                    # would call up to date. Start over.
                    for f in [built, stamp, *build.glob("*.o"), build / ".ninja_log", build / ".ninja_deps"]:
                        f.unlink(missing_ok=True)
                print(f"bench: building the recurrences' native kernel in {build} "
                      "(once per machine, about a minute)", file=sys.stderr, flush=True)
                from torch.utils import cpp_extension  # 0.25 s to import: only to build

                mod = cpp_extension.load(name=name, sources=[str(_SRC)], extra_cflags=flags,
                                         build_directory=str(build), verbose=False)
                if built.exists():
                    stamp.write_text(_stamp(built))  # written last: the build finished
                return mod
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except Exception as e:  # noqa: BLE001 -- any failure: the TorchScript loops, said once
        msg = str(e).strip().splitlines()
        warnings.warn(f"bench.models.native: the native kernel cannot be built here ({type(e).__name__}: "
                      f"{msg[-1] if msg else ''}); the normalized cells run their TorchScript / "
                      "Python loops, the plain RNN and GRU nn.RNN / nn.GRU (slower; results equal to rounding). "
                      "BENCH_NORMSEQ_NATIVE=0 skips the attempt.")
        return None


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _import_built(name: str, path: Path):
    """The library a finished build left here, imported directly; None if it does not import
    (then it is rebuilt)."""
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    except Exception:  # noqa: BLE001 -- any failure: rebuild
        return None
