"""The worker's glibc tuning (``dtr.app._release_big_buffers_to_os``): buffers of 4 MiB and
more (S3 upload parts) are mmapped so they go back to the OS when freed; the ~1 MiB write
buffers of every push stay below the threshold (a fresh mapping per buffer costs a page
fault per 4 KiB), and the heap is trimmed only past twice the threshold.
"""

from __future__ import annotations

import ctypes

import pytest

from dtr import app


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc()
    monkeypatch.setattr(ctypes, "CDLL", lambda _name: libc)
    app._release_big_buffers_to_os()
    m_trim_threshold, m_mmap_threshold = -1, -3
    assert libc.calls == [(m_mmap_threshold, 4 * 1024 * 1024),
                          (m_trim_threshold, 8 * 1024 * 1024)]
    assert 1024 * 1024 < app._MMAP_THRESHOLD <= 5 * 1024 * 1024  # S3 parts: 5 MiB and up


def test_without_glibc_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(_name: object) -> object:
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    app._release_big_buffers_to_os()  # no error
