"""What tests/test_killed_steps.py and benchmarks/killed_steps.py both need to watch a killed command: the processes
left of its session."""

from __future__ import annotations

from pathlib import Path


def session_processes(session: int) -> list[str]:
    """Command lines of the live processes of a session (pyspark's worker daemon makes its own process group, but
    stays in the session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name}: {cmdline[:150]}")
    return found
