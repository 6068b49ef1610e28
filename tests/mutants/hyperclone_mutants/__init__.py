"""Deliberately broken backends: one realistic bug each, in a copy of a reference
backend.  The conformance suite must fail every one of them (tests/test_mutants.py);
never register them for real use.

Each is a subclass of the numpy backend (expansion and forward bugs) or of the
torch backend (training bugs) that changes one method the way a backend author
plausibly gets it wrong."""

from __future__ import annotations

import math

import numpy as np

from hyperclone_core.model import decoder
from hyperclone_core.io.dtypes import bf16_to_f32
from hyperclone_core.algebra.noise import mean_square, zero_sum_noise
from hyperclone_core.run.numpy_backend import NumpyBackend
from hyperclone_core.model.structure import Params


class _Numpy(NumpyBackend):
    ops = decoder.NumpyOps()
    lazy_weights = False  # the forward below reads numpy arrays, not StoredTensor handles

    def forward(self, family, cfg, weights, tokens, dtype="float64"):
        dt = np.dtype("float32" if dtype == "bfloat16" else dtype)
        params = Params(family, cfg, weights, convert=lambda w: np.asarray(w).astype(dt))
        return decoder.forward(cfg, params, np.asarray(tokens), self.ops)


# ---------------------------------------------------------------- expansion


class NoProjection(_Numpy):
    """Noise that is not projected to sum 0 over the copies: the function changes."""

    name = "mutant_noise"

    def zero_sum_noise(self, shape, axis, groups, seed, like, n_groups=None):
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    def add_zero_sum_noise(self, *a, **k):
        return None


class AmplitudeSNR(_Numpy):
    """The SNR read as an amplitude ratio (dB / 20): the noise is ~3x too strong at 10 dB."""

    name = "mutant_snr"

    def add_zero_sum_noise(self, x, axis, groups, snr_db, seed, n_groups=None, chunk_elems=0):
        noise = zero_sum_noise(x.shape, axis, groups, seed, x.dtype)
        factor = math.sqrt(mean_square(x) / mean_square(noise) / 10.0 ** (snr_db / 20.0))
        x += x.dtype.type(factor) * noise
        return x


class UniformTake(_Numpy):
    """Every gather assumed to be a uniform tiling (j mod old): wrong for uneven ffn
    growth, interleaved layouts and composite GQA axes."""

    name = "mutant_uneven_take"
    take_axes = None

    def take(self, x, axis, index):
        return np.take(x, np.arange(len(index)) % x.shape[axis], axis=axis)


class LastAxisScale(_Numpy):
    """Coefficients flattened and broadcast along the last axis whatever axis they belong to."""

    name = "mutant_scale_1d"
    scale_ = None

    def scale(self, x, coeffs):
        return x * np.asarray(coeffs).reshape(-1).astype(x.dtype)


class TruncatingBF16(_Numpy):
    """bfloat16 by dropping the low 16 bits (truncation), not rounding to nearest even."""

    name = "mutant_bf16_rounding"

    def cast(self, x, dtype):
        if dtype != "bfloat16":
            return super().cast(x, dtype)
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16
        return bf16_to_f32(bits.astype(np.uint16))


class ReshapeColumnMajor(_Numpy):
    """Reshape in Fortran order."""

    name = "mutant_reshape_order"

    def reshape(self, x, shape):
        return np.reshape(x, shape, order="F")


class SharedNoiseSeed(_Numpy):
    """Noise drawn from one fixed seed for every tensor: copies break symmetry identically."""

    name = "mutant_noise_seed"

    def zero_sum_noise(self, shape, axis, groups, seed, like, n_groups=None):
        return super().zero_sum_noise(shape, axis, groups, 1234, like, n_groups)

    def add_zero_sum_noise(self, x, axis, groups, snr_db, seed, n_groups=None, chunk_elems=1 << 24):
        return super().add_zero_sum_noise(x, axis, groups, snr_db, 1234, n_groups, chunk_elems)


class HalfCheckpoints(_Numpy):
    """Checkpoints written in float16 when asked for bfloat16-looking data ("half is half")."""

    name = "mutant_checkpoint_dtype"

    def save_checkpoint(self, folder, hf_config, weights):
        from hyperclone_core import io

        io.save_checkpoint(folder, hf_config, {k: np.asarray(v, np.float16) for k, v in weights.items()})


# ---------------------------------------------------------------- forward


class _InterleavedRope(decoder.NumpyOps):
    def rope(self, x, cos, sin):
        rd = cos.shape[-1]
        rot, rest = x[..., :rd], x[..., rd:]
        even, odd = rot[..., 0::2], rot[..., 1::2]
        c, s = cos[None, :, None, : rd // 2], sin[None, :, None, : rd // 2]
        out = np.stack([even * c - odd * s, even * s + odd * c], axis=-1).reshape(rot.shape)
        return np.concatenate([out, rest], axis=-1)


class InterleavedRope(_Numpy):
    """RoPE rotating adjacent pairs (the GPT-J / "traditional" convention) instead of halves."""

    name = "mutant_rope"
    ops = _InterleavedRope()


class _NoSoftcap(decoder.NumpyOps):
    def attention(self, q, k, v, *, scale, window, softcap):
        return super().attention(q, k, v, scale=scale, window=window, softcap=0.0)


class NoSoftcap(_Numpy):
    """A fused attention kernel that has no logit softcap (Gemma-2)."""

    name = "mutant_softcap"
    ops = _NoSoftcap()


class _TiledKV(decoder.NumpyOps):
    def attention(self, q, k, v, *, scale, window, softcap):
        rep = q.shape[2] // k.shape[2]
        if rep > 1:
            k, v = np.tile(k, (1, 1, rep, 1)), np.tile(v, (1, 1, rep, 1))
        return super().attention(q, k, v, scale=scale, window=window, softcap=softcap)


class TiledKV(_Numpy):
    """GQA with kv heads tiled (head h reads kv h mod KV) instead of repeated (h // (H/KV))."""

    name = "mutant_gqa_layout"
    ops = _TiledKV()


# ---------------------------------------------------------------- training (torch)


def _torch_mutant(name: str, engine_patch):
    from hyperclone_torch.backend import TorchBackend
    from hyperclone_torch.engine import TorchEngine

    engine_cls = type(f"{name}Engine", (TorchEngine,), engine_patch)

    class Mutant(TorchBackend):
        def engine(self, hf_config, weights, config, optimizer):
            import torch

            from hyperclone_torch.model import Decoder

            torch.set_num_threads(1)
            return engine_cls(Decoder.from_weights(hf_config, weights, dtype=torch.float32), config, optimizer)

    Mutant.name = name
    return Mutant()


def _wd_sign_step(self, micro, lr):
    import torch

    res = super(type(self), self).step(micro, lr)
    if res.updated:  # decay applied as growth: p *= (1 + lr wd) where AdamW has (1 - lr wd)
        with torch.no_grad():
            for g in self.optimizer.param_groups:
                f = (1 + g["lr"] * g["weight_decay"]) / (1 - g["lr"] * g["weight_decay"])
                for p in g["params"]:
                    p.mul_(f)
    return res


def _first_batch_step(self, micro, lr):
    if not hasattr(self, "_first"):
        self._first = [np.array(b) for b in micro]
    return super(type(self), self).step(self._first, lr)


def _late_loss_step(self, micro, lr):
    import torch

    from hyperclone_torch.engine import lm_loss

    res = super(type(self), self).step(micro, lr)
    with torch.no_grad():  # the loss reported after the update, on the same batch
        res.loss = float(np.mean([float(lm_loss(self.forward, torch.from_numpy(np.asarray(b, np.int64))))
                                  for b in micro]))
    return res


def __getattr__(name):
    patches = {"wd_sign": {"step": _wd_sign_step}, "batch_order": {"step": _first_batch_step},
               "late_loss": {"step": _late_loss_step}}
    key = name.removeprefix("mutant_")
    if key in patches:
        return _torch_mutant(f"mutant_{key}", patches[key])
    if name in PROTOCOL_MUTANTS:
        return make_protocol_mutant(name)
    raise AttributeError(name)


MUTANTS = {
    "mutant_noise": NoProjection(), "mutant_snr": AmplitudeSNR(), "mutant_uneven_take": UniformTake(),
    "mutant_scale_1d": LastAxisScale(), "mutant_bf16_rounding": TruncatingBF16(),
    "mutant_reshape_order": ReshapeColumnMajor(), "mutant_noise_seed": SharedNoiseSeed(),
    "mutant_checkpoint_dtype": HalfCheckpoints(), "mutant_rope": InterleavedRope(), "mutant_softcap": NoSoftcap(),
    "mutant_gqa_layout": TiledKV(),
}
globals().update(MUTANTS)
TORCH_MUTANTS = ("mutant_wd_sign", "mutant_batch_order", "mutant_late_loss")

from .protocol import ALL as PROTOCOL_MUTANTS, make as make_protocol_mutant  # noqa: E402  (issue 22's)

ALL = tuple(MUTANTS) + TORCH_MUTANTS + PROTOCOL_MUTANTS

from .growth import register as _register_growth  # noqa: E402  (issue 21: growth inside training)

ALL += _register_growth(globals())
