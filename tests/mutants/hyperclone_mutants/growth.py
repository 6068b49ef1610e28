"""Training engines that get growth inside a run wrong, one realistic way each (torch
engine subclasses, built lazily like the package's other training mutants).  The
conformance suite's test_growth must kill every one."""

from __future__ import annotations

import dataclasses


def _drop_moments_import(self, state):
    """Imports the parameters and the step, but restarts the moments at zero."""
    import numpy as np

    zeros = {n: np.zeros_like(np.asarray(a)) for n, a in state.exp_avg.items()}
    type(self).__mro__[1].import_state(self, dataclasses.replace(state, exp_avg=zeros, exp_avg_sq=dict(zeros)))


def _reset_step_import(self, state):
    """Keeps the moments but restarts AdamW's step count (bias corrections start over)."""
    type(self).__mro__[1].import_state(self, state)
    for st in self.optimizer.state.values():
        st["step"].zero_()


def _ignore_multipliers_init(self, module, config, optimizer, par=None):
    """Builds its optimizer from the LR multipliers alone: eps and decay multipliers dropped."""
    type(self).__mro__[1].__init__(self, module, config, dataclasses.replace(optimizer, eps_mult={}, wd_mult={}),
                                   par)


def _raw_norm_init(self, module, config, optimizer, par=None):
    """Clips on the clone's own global norm, not the source-equivalent (weighted) one."""
    type(self).__mro__[1].__init__(self, module, config, dataclasses.replace(optimizer, clip_weight={}), par)


PATCHES = {
    "drop_moments": {"import_state": _drop_moments_import},
    "reset_step": {"import_state": _reset_step_import},
    "ignore_multipliers": {"__init__": _ignore_multipliers_init},
    "raw_clip_norm": {"__init__": _raw_norm_init},
}


def register(namespace: dict) -> tuple:
    """Make the package's lazy ``__getattr__`` build these too; their names, for ``ALL``."""
    previous = namespace["__getattr__"]

    def __getattr__(name):
        key = name.removeprefix("mutant_")
        if key in PATCHES:
            return namespace["_torch_mutant"](f"mutant_{key}", PATCHES[key])
        return previous(name)

    namespace["__getattr__"] = __getattr__
    return tuple(f"mutant_{k}" for k in PATCHES)
