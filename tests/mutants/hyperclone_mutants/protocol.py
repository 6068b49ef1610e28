"""Mutants of the protocol surface (issue 22): one realistic bug each in a fast path,
a decoder flag, the streaming hook or an engine rule that the suite used to reach
only in one regime or not at all.  Registered by the package (``ALL``) like the
others; built on first use, so torch loads only for the engine mutants."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hyperclone_core.algebra.noise import mean_square
from hyperclone_core.model import decoder
from hyperclone_core.model.structure import Params
from hyperclone_core.run.numpy_backend import NumpyBackend


class _Numpy(NumpyBackend):
    """The numpy backend with its forward over ``ops`` and ``cfg`` as ``config`` rewrites it."""

    ops = decoder.NumpyOps()
    lazy_weights = False  # the forward below reads numpy arrays, not StoredTensor handles

    def config(self, cfg):
        return cfg

    def forward(self, family, cfg, weights, tokens, dtype="float64"):
        dt = np.dtype("float32" if dtype == "bfloat16" else dtype)
        params = Params(family, cfg, weights, convert=lambda w: np.asarray(w).astype(dt))
        return decoder.forward(self.config(cfg), params, np.asarray(tokens), self.ops)


# ---------------------------------------------------------------- forward fast paths and flags


class _FastAttention(decoder.NumpyOps):
    """A fused kernel taken when there is no softcap (the softcapped path stays exact)."""

    wider = 0
    default_scale = False

    def attention(self, q, k, v, *, scale, window, softcap):
        if not softcap:
            window = window + self.wider if window else 0
            scale = q.shape[-1] ** -0.5 if self.default_scale else scale
        return super().attention(q, k, v, scale=scale, window=window, softcap=softcap)


class _WideWindow(_FastAttention):
    wider = 1


class _DefaultScale(_FastAttention):
    default_scale = True


class WideWindow(_Numpy):
    """The fused path's sliding-window mask one key too wide (``<=`` for ``<``)."""

    name = "mutant_window_wide"
    ops = _WideWindow()


class DefaultScale(_Numpy):
    """The fused path ignores the explicit attention scale (head_dim ** -0.5 always)."""

    name = "mutant_attn_scale"
    ops = _DefaultScale()


class RopeBase(_Numpy):
    """RoPE tables built with the usual base 10000 whatever the config says."""

    name = "mutant_rope_base"

    def config(self, cfg):
        return replace(cfg, rope_theta=10000.0)


class FinalSoftcap(_Numpy):
    """The LM head's logit softcap left out (the attention one is kept)."""

    name = "mutant_final_softcap"

    def config(self, cfg):
        return replace(cfg, final_softcap=0.0)


class NoClipQKV(_Numpy):
    """OLMo's q/k/v clipping left out."""

    name = "mutant_clip_qkv"

    def config(self, cfg):
        return replace(cfg, clip_qkv=0.0)


# ---------------------------------------------------------------- the streaming hook


def _power_noise(shape, axis, groups, seed, n):
    """Gaussian noise projected to sum 0 over the copies of each old index in ``groups``."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    moved = np.moveaxis(noise, axis, -1)
    sums = np.zeros(moved.shape[:-1] + (n,))
    counts = np.bincount(groups, minlength=n)
    np.add.at(sums.T, groups, np.moveaxis(moved, -1, 0))
    moved -= (sums / counts)[..., groups]
    return noise


class TiledPowerNoise(NumpyBackend):
    """``add_zero_sum_noise_power`` assumes the tile layout (copy j of index j mod n)
    instead of reading ``groups``: wrong for interleaved and uneven copies."""

    name = "mutant_power_layout"

    def add_zero_sum_noise_power(self, x, axis, groups, power, seed, n_groups=None, chunk=1 << 16):
        n = int(n_groups or int(np.max(groups)) + 1)
        tiled = np.arange(x.shape[axis]) % n
        noise = _power_noise(x.shape, axis, tiled, seed, n)
        x += (noise * np.sqrt(power / mean_square(noise))).astype(x.dtype)
        return x


class AmplitudePowerNoise(NumpyBackend):
    """``add_zero_sum_noise_power`` reads ``power`` as an RMS amplitude, not a mean square."""

    name = "mutant_power_amplitude"

    def add_zero_sum_noise_power(self, x, axis, groups, power, seed, n_groups=None, chunk=1 << 16):
        return super().add_zero_sum_noise_power(x, axis, groups, power * power, seed, n_groups)


class BlockSeedIgnored(NumpyBackend):
    """``add_zero_sum_noise_power`` draws from the tensor's first seed for every block."""

    name = "mutant_block_seed"

    def add_zero_sum_noise_power(self, x, axis, groups, power, seed, n_groups=None, chunk=1 << 16):
        return super().add_zero_sum_noise_power(x, axis, groups, power, 7, n_groups)


NUMPY = {m.name: m for m in (WideWindow, DefaultScale, RopeBase, FinalSoftcap, NoClipQKV, TiledPowerNoise,
                             AmplitudePowerNoise, BlockSeedIgnored)}


# ---------------------------------------------------------------- engine rules (torch)


def _clip_up(self):
    import torch

    norm = float(torch.nn.utils.clip_grad_norm_(self._clip_params, float("inf")))
    if self.spec.grad_clip > 0:  # clip / norm whatever the norm: small gradients are scaled up
        for p in self._clip_params:
            if p.grad is not None:
                p.grad.mul_(self.spec.grad_clip / (norm + 1e-6))
    return norm


def _no_guard_step(self, micro, lr):
    from hyperclone_core.train import StepResult

    for g in self.optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
    loss = self._backward(micro)
    norm = self._grad_norm()
    self.optimizer.step()  # no finiteness check
    self.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, norm, True)


def _eval_first(self, batches):
    return type(self).__mro__[1].evaluate(self, batches[:1])


def _bf16_masters_step(self, micro, lr):
    import torch

    res = type(self).__mro__[1].step(self, micro, lr)
    if self.cfg.dtype == "bfloat16":  # the model itself held in bfloat16
        with torch.no_grad():
            for p in self._params:
                p.copy_(p.to(torch.bfloat16).float())
    return res


def _bf16_ignored_amp(self):
    import torch

    return torch.autocast(self.device.type, enabled=False)


def _rank_sum_norm(self):
    for p in self._clip_params:  # DDP averaged; "undo" it to a sum over ranks
        if p.grad is not None and self.world > 1:
            p.grad.mul_(self.world)
    return type(self).__mro__[1]._grad_norm(self)


def _phantom_export(self):
    from hyperclone_torch import distributed

    distributed.full_optimizer_state(self.module, self.optimizer, self.par)  # initialises torch's state
    return type(self).__mro__[1].export_state(self)


def _float64_export(self):
    st = type(self).__mro__[1].export_state(self)
    st.params = {n: np.asarray(v, np.float64) for n, v in st.params.items()}
    return st


TORCH = {
    "mutant_clip_up": {"_grad_norm": _clip_up},
    "mutant_no_guard": {"step": _no_guard_step},
    "mutant_eval_first": {"evaluate": _eval_first},
    "mutant_bf16_masters": {"step": _bf16_masters_step},
    "mutant_bf16_ignored": {"_amp": _bf16_ignored_amp},
    "mutant_rank_sum": {"_grad_norm": _rank_sum_norm},
    "mutant_phantom_step": {"export_state": _phantom_export},
    "mutant_state_dtype": {"export_state": _float64_export},
}

ALL = tuple(NUMPY) + tuple(TORCH)


def make(name: str):
    if name in NUMPY:
        return NUMPY[name]()
    from . import _torch_mutant

    return _torch_mutant(name, TORCH[name])
