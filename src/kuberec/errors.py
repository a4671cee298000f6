"""Errors users can act on. The CLI prints them as one line (no traceback) and exits with status 2."""


class KuberecError(Exception):
    """Base class: the message says what was wrong and what to do."""


class DataError(KuberecError):
    """Input data is missing, corrupt, truncated or inconsistent; nothing was written."""


class OutOfSpaceError(KuberecError):
    """A write found the disk (or volume) full; what was written before it is intact."""


def out_of_space(err: BaseException) -> str | None:
    """The line that says the disk is full (ENOSPC) in `err` or the errors it came from, or None. Errors from the JVM
    (Py4J) carry the Java exception and its causes as text, so the text is searched too."""
    import errno

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return str(seen)
        found = [line.strip() for line in str(seen).splitlines() if "No space left on device" in line]
        if found:
            return found[-1]  # the innermost cause
        seen = seen.__cause__ or seen.__context__
    return None
