"""kuberec's tests and their harness (`tests.e2e`: make e2e's driver; `tests.scenarios`: fault scenarios the
benchmarks time too), importable as the package `tests` from the repository root.

A regular package on purpose: tensorflow-similarity's wheel installs a top-level `tests` package into
site-packages, and a regular package anywhere on sys.path wins over a namespace one, so without this file
`import tests.e2e` finds that one. The test modules of this folder are imported as `tests.test_...`; those of
its subfolders (no __init__.py) keep their basenames.
"""
