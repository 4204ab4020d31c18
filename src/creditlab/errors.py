"""Errors that the command line reports as one line, with exit status 2."""


class CreditlabError(Exception):
    """An input or state problem the user can fix; the message names the value and the fix."""


class DivergenceError(CreditlabError):
    """A loss, an update or a weight became NaN or infinite."""
