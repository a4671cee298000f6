"""`python -m <module> <args>` for runners that only take a file: spark-submit runs a SparkApplication's
`mainApplicationFile`, so the Spark image ships this file as /opt/kuberec/run_module.py and the driver runs
`run_module.py <module> <args>`, the same entrypoint the local backend runs as `python -m <module> <args>`.
"""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: run_module.py MODULE [ARGS...]")
    module, args = argv[0], argv[1:]
    # As `python -m` does: the module sees itself as argv[0] and runs as __main__.
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
