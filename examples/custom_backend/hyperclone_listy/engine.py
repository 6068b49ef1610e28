"""listy's engine (capability ``train``): the core's decoder maths, differentiated.

A framework brings its own autodiff; listy has none, so it carries the smallest one
that serves: ``Var`` records each numpy result with the vector-Jacobian products of
its inputs, and ``Tape`` is an array namespace over it (the subset of functions the
core's decoder calls, ``hyperclone_core.model.decoder.ArrayOps``).  The engine runs
``decoder.forward`` + ``cross_entropy`` with it, walks the tape back for the
gradients, and leaves every policy -- clipping, AdamW, LR multipliers, decay mask --
to the core (``adamw_step``).  Float32 arithmetic; under ``dtype="bfloat16"`` the
weights are rounded to bfloat16 first (the numpy oracle's bfloat16 forward) and the
parameters and moments stay float32.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from hyperclone_core import family_for_config
from hyperclone_core.io.dtypes import cast_numpy
from hyperclone_core.model import decoder
from hyperclone_core.model.structure import Params, slots
from hyperclone_core.train import EngineState, StepResult, adamw_step, check_state, fixed_threads, global_norm


class Var:
    """A numpy value on the tape: ``parents`` are (Var, vjp) pairs."""

    __array_priority__ = 100  # numpy defers to Var's operators

    def __init__(self, value, parents=()):
        self.value, self.parents, self.grad = value, parents, None

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)
    T = property(lambda self: _op(self.value.T, (self, lambda g: g.T)))

    def astype(self, dtype):
        return _op(self.value.astype(dtype), (self, lambda g: g.astype(self.dtype)))

    def __getitem__(self, idx):
        idx = tuple(_v(i) for i in idx) if isinstance(idx, tuple) else _v(idx)

        basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice))
                    for i in (idx if isinstance(idx, tuple) else (idx,)))

        def vjp(g):
            out = np.zeros(self.shape, g.dtype)
            if basic:  # a view: each element once
                out[idx] += g
            else:  # a gather (an embedding lookup): repeated rows accumulate
                np.add.at(out, idx, g)
            return out
        return _op(self.value[idx], (self, vjp))

    def __add__(self, o):
        return _op(self.value + _v(o), (self, lambda g: _fit(g, self.shape)), (o, lambda g: _fit(g, np.shape(_v(o)))))

    def __sub__(self, o):
        return _op(self.value - _v(o), (self, lambda g: _fit(g, self.shape)), (o, lambda g: -_fit(g, np.shape(_v(o)))))

    def __mul__(self, o):
        a, b = self.value, _v(o)
        return _op(a * b, (self, lambda g: _fit(g * b, a.shape)), (o, lambda g: _fit(g * a, np.shape(b))))

    def __truediv__(self, o):
        a, b = self.value, _v(o)
        return _op(a / b, (self, lambda g: _fit(g / b, a.shape)), (o, lambda g: _fit(-g * a / (b * b), np.shape(b))))

    def __matmul__(self, o):
        a, b = self.value, _v(o)
        return _op(a @ b, (self, lambda g: _fit(g @ np.swapaxes(b, -1, -2), a.shape)),
                   (o, lambda g: _fit(np.swapaxes(a, -1, -2) @ g, np.shape(b))))

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, o):
        return -self + o

    def __rtruediv__(self, o):
        return _op(o / self.value, (self, lambda g: _fit(-g * o / (self.value * self.value), self.shape)))

    def __neg__(self):
        return _op(-self.value, (self, lambda g: -g))


def _v(x):
    return x.value if isinstance(x, Var) else x


def _op(value, *pairs):
    """``value`` on the tape when any input is (a plain array otherwise)."""
    parents = tuple((p, f) for p, f in pairs if isinstance(p, Var))
    return Var(value, parents) if parents else value


def _fit(g, shape):
    """Sum a broadcast gradient back to ``shape``."""
    g = np.asarray(g)
    while g.ndim > len(shape):
        g = g.sum(0)
    for k, s in enumerate(shape):
        if s == 1 and g.shape[k] != 1:
            g = g.sum(k, keepdims=True)
    return g


def _expand(g, x, axis, keepdims):
    return g if keepdims or axis is None else np.expand_dims(g, axis)


class Tape:
    """The array namespace the decoder maths calls, on ``Var`` and numpy alike."""

    float16, float32, float64 = np.float16, np.float32, np.float64

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def zeros_like(self, x):
        return np.zeros_like(_v(x))

    def argsort(self, x, axis=-1, kind=None):
        return np.argsort(_v(x), axis=axis, kind=kind)

    def exp(self, x):
        y = np.exp(_v(x))
        return _op(y, (x, lambda g: g * y))

    def log(self, x):
        return _op(np.log(_v(x)), (x, lambda g: g / _v(x)))

    def tanh(self, x):
        y = np.tanh(_v(x))
        return _op(y, (x, lambda g: g * (1.0 - y * y)))

    def sqrt(self, x):
        y = np.sqrt(_v(x))
        return _op(y, (x, lambda g: g * 0.5 / y))

    def maximum(self, x, y):
        a, b = _v(x), _v(y)
        return _op(np.maximum(a, b), (x, lambda g: _fit(g * (a >= b), np.shape(a))),
                   (y, lambda g: _fit(g * (a < b), np.shape(b))))

    def clip(self, x, lo, hi):
        a = _v(x)
        return _op(np.clip(a, lo, hi), (x, lambda g: g * ((a >= lo) & (a <= hi))))

    def where(self, cond, x, y):
        a, b = _v(x), _v(y)
        return _op(np.where(cond, a, b), (x, lambda g: _fit(np.where(cond, g, 0), np.shape(a))),
                   (y, lambda g: _fit(np.where(cond, 0, g), np.shape(b))))

    def sum(self, x, axis=None, keepdims=False):
        a = _v(x)
        return _op(np.sum(a, axis=axis, keepdims=keepdims),
                   (x, lambda g: np.broadcast_to(_expand(g, a, axis, keepdims), a.shape)))

    def mean(self, x, axis=None, keepdims=False):
        a = _v(x)
        n = a.size if axis is None else a.shape[axis]
        return _op(np.mean(a, axis=axis, keepdims=keepdims),
                   (x, lambda g: np.broadcast_to(_expand(g, a, axis, keepdims) / n, a.shape)))

    def max(self, x, axis=None, keepdims=False):
        a = _v(x)
        y = np.max(a, axis=axis, keepdims=True)
        hit = a == y

        def vjp(g):
            return _expand(g, a, axis, keepdims) * hit / hit.sum(axis=axis, keepdims=True)
        return _op(y if keepdims else np.squeeze(y, axis), (x, vjp))

    def reshape(self, x, shape):
        a = _v(x)
        return _op(np.reshape(a, shape), (x, lambda g: np.reshape(g, a.shape)))

    def swapaxes(self, x, i, j):
        return _op(np.swapaxes(_v(x), i, j), (x, lambda g: np.swapaxes(g, i, j)))

    def repeat(self, x, k, axis):
        a = _v(x)
        ax = axis % a.ndim
        return _op(np.repeat(a, k, axis=ax),
                   (x, lambda g: g.reshape(a.shape[:ax] + (a.shape[ax], k) + a.shape[ax + 1:]).sum(ax + 1)))

    def concatenate(self, xs, axis=0):
        values = [_v(x) for x in xs]
        cuts = np.cumsum([v.shape[axis] for v in values])[:-1]
        out = np.concatenate(values, axis=axis)
        return _op(out, *[(x, lambda g, k=k: np.split(g, cuts, axis=axis)[k]) for k, x in enumerate(xs)])

    def take_along_axis(self, x, idx, axis):
        a = _v(x)

        def vjp(g):
            out = np.zeros(a.shape, g.dtype)
            np.put_along_axis(out, idx, g, axis)  # the indices are distinct along the axis
            return out
        return _op(np.take_along_axis(a, idx, axis=axis), (x, vjp))


class TapeOps(decoder.ArrayOps):
    """The decoder's hooks on the tape: ``stop_gradient`` leaves it, ``erf`` knows its derivative."""

    def __init__(self):
        super().__init__(Tape())
        self._erf = np.vectorize(math.erf, otypes=[np.float64])

    def stop_gradient(self, x):
        return _v(x)

    def erf(self, x):
        a = _v(x)
        return _op(self._erf(a).astype(a.dtype), (x, lambda g: g * (2.0 / math.sqrt(math.pi)) * np.exp(-a * a)))


def backward(loss: Var) -> None:
    """Accumulate d loss / d v into ``v.grad`` for every Var that ``loss`` depends on."""
    order, seen, stack = [], set(), [(loss, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p, _ in node.parents)
    loss.grad = np.ones_like(loss.value)
    for node in reversed(order):
        for parent, vjp in node.parents if node.grad is not None else ():
            g = vjp(node.grad)
            parent.grad = g if parent.grad is None else parent.grad + g


OPS = TapeOps()


class ListyEngine:
    """The ``hyperclone_core.train.Engine`` protocol on the tape: one process, float32."""

    backend = "listy"

    def __init__(self, hf_config, weights, config, optimizer):
        fixed_threads("listy", config.threads, 1, "listy runs numpy on the thread count numpy started with")
        self.config = dict(hf_config)
        self.family = family_for_config(self.config)
        self.cfg = self.family.read(self.config)
        self.names = [n for n in slots(self.family, self.cfg) if n in weights]
        self.shapes = {n: tuple(np.shape(weights[n])) for n in self.names}
        self.rank, self.world = 0, 1
        self.opt, self.bf16 = optimizer, config.dtype == "bfloat16"
        self._p = {n: np.array(weights[n], np.float32) for n in self.names}
        self._m = {n: np.zeros_like(w) for n, w in self._p.items()}
        self._v = {n: np.zeros_like(w) for n, w in self._p.items()}
        self._t = 0

    def _loss(self, batch, grads: bool):
        batch = np.asarray(batch)
        w = {n: cast_numpy(p, "bfloat16") if self.bf16 else p for n, p in self._p.items()}
        leaves = {n: Var(a) for n, a in w.items()} if grads else w
        logits = decoder.forward(self.cfg, Params(self.family, self.cfg, leaves), batch[:, :-1], OPS)
        loss = decoder.cross_entropy(OPS, logits, batch[:, 1:])
        if not grads:
            return float(loss), None
        backward(loss)
        return float(loss.value), {n: np.zeros(v.shape, np.float32) if v.grad is None else v.grad.astype(np.float32)
                                   for n, v in leaves.items()}

    def _mean(self, micro):
        results = [self._loss(b, True) for b in micro]
        grads = {n: sum(g[n] for _, g in results) / len(results) for n in self.names}
        return float(np.mean([loss for loss, _ in results])), grads

    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult:
        loss, grads = self._mean(micro_batches)
        norm = global_norm(grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return StepResult(loss, norm, False)
        self._t += 1
        p, m, v = adamw_step(self.opt, self._p, grads, self._m, self._v, self._t, lr)
        self._p, self._m, self._v = ({n: a[n].astype(np.float32) for n in self.names} for a in (p, m, v))
        return StepResult(loss, norm, True)

    def gradients(self, micro_batches) -> dict:
        return self._mean(micro_batches)[1]

    def evaluate(self, batches) -> float:
        return float(np.mean([self._loss(b, False)[0] for b in batches]))

    def params(self, names: Optional[Sequence[str]] = None) -> dict:
        return {n: self._p[n].copy() for n in (names or self.names)}

    def export_state(self) -> EngineState:
        return EngineState(self.params(), {n: a.copy() for n, a in self._m.items()},
                           {n: a.copy() for n, a in self._v.items()}, self._t)

    def import_state(self, state: EngineState) -> None:
        check_state(state, self.names, self.shapes)
        self._t = int(state.adam_step)
        self._p = {n: np.array(state.params[n], np.float32) for n in self.names}
        fresh = self._t == 0
        self._m = {n: np.zeros_like(self._p[n]) if fresh else np.array(state.exp_avg[n], np.float32) for n in self.names}
        self._v = {n: np.zeros_like(self._p[n]) if fresh else np.array(state.exp_avg_sq[n], np.float32)
                   for n in self.names}

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


__all__ = ["ListyEngine", "Tape", "TapeOps", "Var", "backward"]
