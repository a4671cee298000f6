"""Local backend: each job is a child process of this machine (Spark local[*], horovodrun --gloo, local Ray)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from kuberec.backends.jobs import HorovodJob, JobFailed, RayJob, SparkJob
from kuberec.settings import Settings

log = logging.getLogger(__name__)

# horovodrun's line when a worker exits with an error; it then stops the others (they exit 143, SIGTERM), so the
# first such line names the worker that failed (or the first to notice another's error).
_WORKER_FAILED = re.compile(r"^Process (\d+) exit with status code (-?\d+)\.")


def _status(code: int) -> str:
    """An exit status as a shell reports it: 128 + N is death by signal N."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        return f"killed by {signal.Signals(number).name}" if number else f"exit status {code}"
    except ValueError:
        return f"exit status {code}"


def die_with_parent() -> None:
    """`preexec_fn` of a child that must not outlive the process that started it: Linux sends it SIGTERM when its
    parent dies, even by SIGKILL (which the parent cannot handle to stop it). SIGTERM lets horovodrun and Ray stop
    their own children; a Spark JVM exits with its Python driver."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalBackend:
    settings: Settings

    def _run(self, name: str, argv: list[str], horovodrun: bool = False) -> None:
        env = {**os.environ, **self.settings.to_env()}
        log.info("%s: %s", name, " ".join(argv))
        # horovodrun's own lines go to stdout: passed through, and read for the worker that failed first.
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if horovodrun else None, text=True,
                                   errors="replace", bufsize=1, preexec_fn=die_with_parent)
        first_failure = None
        try:
            for line in process.stdout or ():
                sys.stdout.write(line)
                sys.stdout.flush()
                first_failure = first_failure or _WORKER_FAILED.match(line)
            returncode = process.wait()
        except KeyboardInterrupt:
            # The job (same process group) got the Ctrl-C too: let it stop cleanly (a sweep saves its state, a
            # training its checkpoint) instead of killing it as subprocess.run would after 0.25 s.
            process.wait()
            raise
        if returncode != 0:
            worker = (f": Horovod worker rank {first_failure[1]} was the first to exit "
                      f"({_status(int(first_failure[2]))}) and horovodrun stopped the others" if first_failure else "")
            raise JobFailed(f"step {name!r} failed with exit status {returncode}{worker}: {' '.join(argv)}")

    def run_spark(self, job: SparkJob) -> None:
        self._run(job.name, [sys.executable, "-m", job.module, *job.args])

    def run_horovod(self, job: HorovodJob) -> None:
        command = [sys.executable, "-m", job.module, *job.args]
        if job.workers <= 1:
            self._run(job.name, command)
            return
        horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or shutil.which("horovodrun")
        if horovodrun is None:
            raise JobFailed("horovodrun not found: run `make setup` (it builds Horovod into the virtualenv)")
        slots = job.workers
        # Run as kuberec.backends.horovodrun: credentials in the environment stay out of the ranks' command lines.
        launcher = [sys.executable, "-m", "kuberec.backends.horovodrun"]
        self._run(job.name, [*launcher, "-np", str(job.workers), "-H", f"localhost:{slots}", "--gloo", *command],
                  horovodrun=True)

    def run_ray(self, job: RayJob) -> None:
        self._run(job.name, [sys.executable, "-m", job.module, *job.args])
