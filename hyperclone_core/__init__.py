"""hyperclone_core: the backend-neutral HyperCloning spec, planner, certificate and numpy oracle.

Imports numpy and the standard library only.
"""

from .errors import CertificateError, CheckpointError, ConfigError, HypercloneError, PlanError
from .model.families import FAMILIES, family_for_config, get_family, register_family
from .algebra.growth import AxisMap, ReplicationMap, axis_map
from .algebra.planner import AddNoise, Cast, Certificate, Growth, Offset, Plan, Reshape, Scale, Take, TensorPlan, layer_map, plan
from .model.spec import Axis, DecoderConfig, Family, Role, in_, out, tensor_names
from .algebra.strategy import (DEFAULT, Diagonal, Explicit, FirstCopy, RandomSplit, Rules, Strategy, Symmetric, diagonal,
                               first_copy, noisy, random_split, symmetric)
from .algebra.strategy import parse as parse_strategy

__version__ = "0.1.0"

__all__ = [
    "AddNoise", "Axis", "AxisMap", "Cast", "Certificate", "CertificateError", "CheckpointError",
    "ConfigError", "DEFAULT", "DecoderConfig", "Diagonal", "Explicit", "FAMILIES", "Family",
    "FirstCopy", "Growth", "HypercloneError", "Offset", "Plan", "PlanError", "RandomSplit", "ReplicationMap",
    "Reshape", "Role", "Rules", "Scale", "Strategy", "Symmetric", "Take", "TensorPlan", "axis_map",
    "diagonal", "family_for_config", "first_copy", "get_family", "in_", "layer_map", "noisy", "out",
    "parse_strategy", "plan", "random_split", "register_family", "symmetric", "tensor_names",
]
