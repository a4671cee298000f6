"""`Every(seconds, sample)`: calls `sample()` at once and then every `seconds` in a thread while a `with` block runs
(the benchmarks' memory, disk and load samplers)."""

from __future__ import annotations

import threading
from typing import Callable


class Every:
    def __init__(self, seconds: float, sample: Callable[[], None]) -> None:
        self.seconds, self.sample = seconds, sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.seconds):
                return

    def __enter__(self) -> "Every":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
