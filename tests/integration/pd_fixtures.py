"""PagerDuty contract server fixtures: one receiver per test, in-process or as a child process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from engine.io.pd_receiver import PagerDutyReceiver

__all__ = ["pd_receiver", "pd_receiver_process"]


@pytest.fixture
async def pd_receiver() -> AsyncIterator[PagerDutyReceiver]:
    """A started in-process receiver (default limits: 120 events per 60 s per routing key)."""
    receiver = PagerDutyReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
def pd_receiver_process() -> Iterator[str]:
    """``python -m engine.io.pd_receiver`` in a child process; yields the URL it prints first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.io.pd_receiver", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"receiver did not print its URL: {url!r}\n{err}")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
