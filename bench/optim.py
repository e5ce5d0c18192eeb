"""Adam, RMSprop and SGD with torch.optim's defaults, for parameters on the CPU, without importing
torch._dynamo.

Why: constructing or stepping any torch.optim optimizer imports torch._dynamo (the
`_disable_dynamo` / `_use_grad_for_differentiable` wrappers in torch/optim/optimizer.py), about
1.3 s of every training process here, longer than a small cell trains. These classes repeat, op
for op, what torch.optim runs for CPU tensors with default arguments: torch picks neither the
foreach nor the fused implementation for CPU parameters (`_default_to_fused_or_foreach` allows
foreach only on CUDA/XPU-like devices), so Adam runs `_single_tensor_adam`, RMSprop
`_single_tensor_rmsprop` and SGD `_single_tensor_sgd`. The results are bit for bit the same
(tests/test_optim.py checks every parameter after every step against torch.optim).

One difference in how, not what: at each step where every parameter has a gradient (a training
step of this suite), Adam and RMSprop update all parameters at once -- the same element-wise
operations as torch's per-parameter loop, run once on one flat vector that holds every parameter
(copied in and back), every gradient and every state tensor, instead of once per parameter. The
operations are element-wise, so each element gets the same arithmetic (bit for bit the same as
torch.optim, checked by the same tests); the step costs 51-87 us instead of 153-200 us for the
suite's six-tensor models (measured; 8-17% of a default-sweep training step went to it before).
`state[p]` holds views into the flat state. A step where some parameter has no gradient takes the
per-parameter path (torch's semantics: that parameter is skipped, its step count stays), and so
does every later step (the step counts may differ from then on).

`make_optimizer` hands out these classes only where that holds (real floating-point parameters,
all on the CPU); anywhere else (CUDA) it returns torch.optim's own optimizer.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["Adam", "RMSprop", "SGD", "make_optimizer", "plain_cpu_params"]


class _Optimizer:
    """One parameter group; `param_groups`, `state`, `zero_grad`, `step` and step hooks as in
    torch.optim (the subset the training loop and the tests use)."""

    def __init__(self, params: Iterable[torch.Tensor], defaults: Dict):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if any(isinstance(p, dict) for p in params):
            raise TypeError("bench.optim takes a flat iterable of tensors (one parameter group)")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears twice in the parameter list")
        self.defaults = dict(defaults)
        self.param_groups: List[Dict] = [{"params": params, **self.defaults}]
        self.state: Dict[torch.Tensor, Dict] = {}
        self._flat: Optional[_Flat] = None  # the flat buffers, built at the first all-gradient step
        self._step_pre_hooks: "OrderedDict[int, Callable]" = OrderedDict()
        self._step_post_hooks: "OrderedDict[int, Callable]" = OrderedDict()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """hook(optimizer, args, kwargs) -> None or (new_args, new_kwargs), before every step."""
        handle = RemovableHandle(self._step_pre_hooks)
        self._step_pre_hooks[handle.id] = hook
        return handle

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """hook(optimizer, args, kwargs) -> None, after every step."""
        handle = RemovableHandle(self._step_post_hooks)
        self._step_post_hooks[handle.id] = hook
        return handle

    def step(self, *args, **kwargs):
        for hook in list(self._step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(f"a step pre-hook must return None or (args, kwargs), got {result!r}")
                args, kwargs = result
        out = self._step(*args, **kwargs)
        for hook in list(self._step_post_hooks.values()):
            hook(self, args, kwargs)
        return out

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                if self._flat_step(group):
                    continue
                for p in group["params"]:
                    if p.grad is not None:
                        if p.grad.is_sparse:
                            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                        self._update(p, p.grad, self.state.setdefault(p, {}), group)
        return loss

    # the per-parameter state tensors (zeros at the first step, as torch's) and the step count
    STATE_KEYS: tuple = ()  # empty: no state and no flat path (SGD)

    def _update(self, p, grad, state, group) -> None:
        """The per-parameter path: `_apply` on one parameter and its own state."""
        if not state:
            state["step"] = 0.0
            for k in self.STATE_KEYS:
                state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # torch keeps the count in a float32 tensor and reads it back with .item(): the same
        # integer-valued float while the count is below 2**24
        state["step"] += 1.0
        self._apply(p, grad, state, state["step"], group)

    def _apply(self, p, grad, state, step, group) -> None:
        """The update of `p` (one parameter, or the flat vector of all) from `grad` and `state`'s
        tensors at step count `step`."""
        raise NotImplementedError

    # the flat path (see the module's docstring) -------------------------------------------------

    def _flat_step(self, group) -> bool:
        """Update every parameter of `group` at once, if every one has a dense gradient and no
        earlier step lacked one (the flat path is then retired); else False."""
        if not self.STATE_KEYS:
            return False
        params = group["params"]
        grads = [p.grad for p in params]
        f = self._flat
        if any(g is None or g.is_sparse for g in grads):
            if f is not None:
                f.active = False  # the per-parameter path from now on (its state: the flat views)
            return False
        if f is None:
            if self.state or len({(p.dtype, p.device) for p in params}) != 1:
                return False
            f = self._flat = _Flat(params, self.STATE_KEYS)
            for p, views in zip(params, f.state_views):
                self.state[p] = {"step": 0.0, **views}
        elif not f.active:
            return False
        torch._foreach_copy_(f.grad_views, grads)
        torch._foreach_copy_(f.param_views, params)
        f.step += 1.0
        self._apply(f.param, f.grad, f.state, f.step, group)
        torch._foreach_copy_(params, f.param_views)
        for p in params:
            self.state[p]["step"] = f.step
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"bench.optim.{type(self).__name__}({args})"


class _Flat:
    """One flat vector each for the parameters, their gradients and each state tensor, with views
    shaped like the parameters; `step` is the common step count, `active` False once a step took
    the per-parameter path."""

    def __init__(self, params: List[torch.Tensor], state_keys: tuple):
        n = sum(p.numel() for p in params)
        like = dict(dtype=params[0].dtype, device=params[0].device)
        self.param, self.grad = torch.zeros(n, **like), torch.zeros(n, **like)
        self.state = {k: torch.zeros(n, **like) for k in state_keys}
        spans, o = [], 0
        for p in params:
            spans.append((o, o + p.numel(), p.shape))
            o += p.numel()

        def views(flat):
            return [flat[a:b].view(shape) for a, b, shape in spans]

        self.param_views, self.grad_views = views(self.param), views(self.grad)
        per_key = {k: views(v) for k, v in self.state.items()}
        self.state_views = [{k: per_key[k][i] for k in state_keys} for i in range(len(params))]
        self.step = 0.0
        self.active = True


class Adam(_Optimizer):
    """torch.optim.Adam(params, lr) with its defaults (betas (0.9, 0.999), eps 1e-8, no weight
    decay, no amsgrad): `_single_tensor_adam` on the CPU path."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    STATE_KEYS = ("exp_avg", "exp_avg_sq")

    def _apply(self, p, grad, state, step, group) -> None:
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


class RMSprop(_Optimizer):
    """torch.optim.RMSprop(params, lr) with its defaults (alpha 0.99, eps 1e-8, no momentum, not
    centered, no weight decay): `_single_tensor_rmsprop` on the CPU path."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    STATE_KEYS = ("square_avg",)

    def _apply(self, p, grad, state, step, group) -> None:
        alpha, lr, eps = group["alpha"], group["lr"], group["eps"]
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        avg = square_avg.sqrt().add_(eps)
        p.addcdiv_(grad, avg, value=-lr)


class SGD(_Optimizer):
    """torch.optim.SGD(params, lr) with its defaults (no momentum, dampening or weight decay):
    `_single_tensor_sgd` on the CPU path."""

    def __init__(self, params, lr: float = 1e-3):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})

    def _update(self, p, grad, state, group) -> None:  # no state (torch keeps none without momentum)
        p.add_(grad, alpha=-group["lr"])


OPTIMIZERS = {"adam": Adam, "rmsprop": RMSprop, "sgd": SGD}


def plain_cpu_params(params: List[torch.Tensor]) -> bool:
    """True when torch.optim would take its single-tensor path for `params` with default
    arguments: plain tensors or Parameters (no subclasses), real floating point, all on the CPU."""
    return bool(params) and all(
        type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type == "cpu" and p.is_floating_point()
        for p in params)


def make_optimizer(name: str, params, lr: float):
    """`name` in adam / rmsprop / sgd, at learning rate `lr`, other settings torch's defaults.
    CPU parameters get the dynamo-free twin above; any other device torch.optim itself."""
    params = list(params)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if plain_cpu_params(params):
        return OPTIMIZERS[name](params, lr=lr)
    # torch.optim imports torch._dynamo when the optimizer is built
    return {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}[name](params, lr=lr)
