"""Errors users can act on. The CLI prints them as one line (no traceback) and exits with status 2."""


class KuberecError(Exception):
    """Base class: the message says what was wrong and what to do."""


class DataError(KuberecError):
    """Input data is missing, corrupt, truncated or inconsistent; nothing was written."""
