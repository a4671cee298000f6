"""How every kuberec program ends: the `kuberec` command and each step module run as `python -m kuberec....`.

An expected failure (a KuberecError: bad input, missing data, a failed job) prints one line on stderr,
`<program>: error: <message>`, and exits with status 2; so does a full disk (ENOSPC, also when the JVM hit it),
which the user can fix too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from kuberec.errors import KuberecError, out_of_space

USER_ERROR_STATUS = 2  # argparse's status for bad usage: the user can fix it


def exit_status(program: str, main: Callable[[], int | None]) -> int:
    """`main()`'s exit status; a KuberecError becomes the one-line message and USER_ERROR_STATUS."""
    try:
        return int(main() or 0)
    except KuberecError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS
    except Exception as err:
        full = out_of_space(err)
        if full is None:
            raise
        # Writers that know their table say which (OutOfSpaceError); this is the last resort for the others.
        print(f"{program}: error: no space left on device ({full}); free space and run it again", file=sys.stderr)
        return USER_ERROR_STATUS


def run_program(program: str, main: Callable[[], int | None]) -> NoReturn:
    """A step module's `if __name__ == "__main__":` line."""
    sys.exit(exit_status(program, main))
