"""Tasks: classification (labels), density (unlabelled images) and bandit (rewards only).

`get(name)` returns a task class and `build(name, options)` an instance with
its options checked; `rule_names(task)` lists the registered rules that serve
a task.
"""

import difflib

from .. import rules
from ..errors import CreditlabError
from ..rules.base import make_options
from .bandit import Bandit
from .base import Task
from .classification import Classification
from .density import Density

_TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Classification, Density, Bandit)}
TASKS = tuple(_TASKS)


def get(name: str) -> type[Task]:
    if name not in _TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CreditlabError(f"unknown task {name!r}; {hint}choose one of {', '.join(TASKS)}")
    return _TASKS[name]


def build(name: str, options: dict | None = None) -> Task:
    cls = get(name)
    return cls(make_options(cls, options, kind="task"))


def rule_names(task: str) -> list[str]:
    """Registered rules that serve `task`, in registration order."""
    cls = get(task)
    return [name for name in rules.names(None) if cls.serves(rules.get(name))]
