"""creditlab: train one network with many credit-assignment rules and measure each against the true gradient."""

__version__ = "0.1.0"

from . import data, nets, rules  # noqa: E402,F401
