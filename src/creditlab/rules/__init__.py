"""The rule registry: `build(name, net, **options)` makes a rule, `names()` lists them."""

import difflib
import importlib

from ..errors import CreditlabError
from .base import OptimizerDefaults, Rule, make_options, option  # noqa: F401

_REGISTRY: dict[str, type[Rule]] = {}

# Modules that define rules; each registers its classes on import.
_MODULES = ("gradient", "feedback", "perturbation", "energy", "microcircuit", "target", "wake_sleep")


def register(cls: type[Rule]) -> type[Rule]:
    if cls.name in _REGISTRY:
        raise ValueError(f"rule {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def get(name: str) -> type[Rule]:
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CreditlabError(f"unknown rule {name!r}; {hint}run `creditlab rules` to list them")
    return _REGISTRY[name]


def names(task: str | None = "classification") -> list[str]:
    """Registered rule names that declare `task` (all of them for None), in registration order."""
    _load()
    return [n for n, cls in _REGISTRY.items() if task is None or task in getattr(cls, "tasks", ("classification",))]


def build(name: str, net, **options) -> Rule:
    """Make rule `name` for `net`; unknown option names raise with the nearest valid one."""
    cls = get(name)
    return cls(net, make_options(cls, options))
