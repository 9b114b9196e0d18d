"""Exceptions of matching plugins."""


class Rematch(Exception):
    """Raised by `match()`: hand this sub-request to the default matcher."""
