"""Spark jobs that write the lake's Delta tables. Each is a module with `main(argv)` (`python -m ...`)."""
