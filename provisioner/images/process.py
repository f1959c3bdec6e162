"""Run a build tool with its output streamed line by line to a log (the
progress display), failing with the tool's last meaningful line."""

from __future__ import annotations

import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import ProvisionerError


def stream(cmd: list[str], *, env: dict[str, str], log: Callable[[str], None], what: str,
           error: type[ProvisionerError] = ProvisionerError, cwd: Path | None = None) -> None:
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", env=env, cwd=cwd, umask=0o022,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # our caller gave up (an exception in log, ^C)
            proc.terminate()
            proc.wait()
    if rc != 0:
        # apt and mmdebstrap mark the line that explains a failure with "E:".
        errors = [line for line in tail if line.startswith("E:")]
        reason = (errors or [line for line in tail if line.strip()] or ["no output"])[-1]
        raise error(f"{what} failed with status {rc}: {reason}")
