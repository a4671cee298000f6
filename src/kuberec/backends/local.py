"""Local backend: each job is a child process of this machine (Spark local[*], horovodrun --gloo, local Ray)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from kuberec.backends import HorovodJob, JobFailed, RayJob, SparkJob
from kuberec.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LocalBackend:
    settings: Settings

    def _run(self, name: str, argv: list[str]) -> None:
        env = {**os.environ, **self.settings.to_env()}
        log.info("%s: %s", name, " ".join(argv))
        process = subprocess.Popen(argv, env=env)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            # The job (same process group) got the Ctrl-C too: let it stop cleanly (a sweep saves its state, a
            # training its checkpoint) instead of killing it as subprocess.run would after 0.25 s.
            process.wait()
            raise
        if returncode != 0:
            raise JobFailed(f"step {name!r} failed with exit status {returncode}: {' '.join(argv)}")

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
        self._run(job.name, [horovodrun, "-np", str(job.workers), "-H", f"localhost:{slots}", "--gloo", *command])

    def run_ray(self, job: RayJob) -> None:
        self._run(job.name, [sys.executable, "-m", job.module, *job.args])
