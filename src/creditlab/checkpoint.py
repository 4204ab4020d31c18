"""Safe checkpoint loading: `torch.load(weights_only=True)` and a name and shape check of every tensor."""

import logging
from pathlib import Path

import torch
from torch import nn

from .errors import CreditlabError

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without running code from it; raise a one-line error if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or malicious file
        # torch's own message may suggest weights_only=False, which would run code from the file: log it, never repeat it.
        log.debug("torch.load(%s, weights_only=True) failed: %s", path, exc)
        raise CreditlabError(f"cannot load checkpoint {path}: it is corrupt, truncated or contains objects other than "
                             f"tensors and plain containers; delete it to start the run afresh") from None
    if not isinstance(state, dict) or "rule" not in state:
        raise CreditlabError(f"{path} is not a creditlab checkpoint; delete it to start the run afresh")
    return state


def load_state_checked(module: nn.Module, state: dict, path: Path) -> None:
    """Load a state dict after checking that every tensor's name and shape match the module's."""
    own = module.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise CreditlabError(f"checkpoint {path} has tensor {name!r} that this run lacks; it belongs to another run")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CreditlabError(f"checkpoint {path} has tensor {name!r} of shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(own[name].shape)}; it belongs to another run")
    missing = [name for name in own if name not in state]
    if missing:
        raise CreditlabError(f"checkpoint {path} lacks tensor {missing[0]!r}; it belongs to another run")
    module.load_state_dict(state)
