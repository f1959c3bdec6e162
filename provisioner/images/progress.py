"""Build and import output: a live status line on a terminal, plain lines
otherwise (logs, CI, pipes), so neither gets the other's noise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, *, tty: bool | None = None, prefix: str = ""):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self.prefix = prefix
        self.index = 0
        self.name = ""
        self.started = self.step_started = time.monotonic()
        self._status = False

    def step(self, name: str) -> None:
        self._end_step()
        self.index += 1
        self.name = name
        self.step_started = time.monotonic()
        self._line(f"[{self.index}/{self.total}] {name}")

    def detail(self, text: str) -> None:
        """A line of tool output or a sub-step: replaces the status line on
        a terminal, one indented line each otherwise."""
        text = text.rstrip()
        if not text:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            head = f"[{self.index}/{self.total}] {self.name}: "
            self.stream.write("\r\x1b[K" + (head + text)[: width - 1])
            self.stream.flush()
            self._status = True
        else:
            self._line(f"    {text}")

    def __call__(self, text: str) -> None:  # usable as a `log` callback
        self.detail(text)

    def done(self, summary: str) -> None:
        self._end_step()
        self._line(f"{self.prefix}{summary} ({time.monotonic() - self.started:.1f} s)")

    def _end_step(self) -> None:
        if self.index and self.tty and self._status:
            self.stream.write("\r\x1b[K")
            self._status = False
        if self.index:
            elapsed = time.monotonic() - self.step_started
            if elapsed >= 1 and not self.tty:
                self._line(f"    {self.name}: {elapsed:.1f} s")

    def _line(self, text: str) -> None:
        if self.tty and self._status:
            self.stream.write("\r\x1b[K")
            self._status = False
        self.stream.write(text + "\n")
        self.stream.flush()
