"""Benchmarks: small by default (make test runs each once), full size with WUMA_BENCH=full.

Figures are printed with the reference measured in the same run; compare ratios, not
absolute numbers, on these noisy machines.
"""

from __future__ import annotations

import os

import pytest

from engine import DataFolder

FULL = os.environ.get("WUMA_BENCH") == "full"


def size(small: int, full: int) -> int:
    return full if FULL else small


@pytest.fixture
def bench_data(tmp_path):
    d = DataFolder.init(tmp_path / "bench-data")
    yield d
    d.close()


def report(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Print a small table: figure, value, target/reference."""
    print(f"\n== {title}")
    for name, value, target in rows:
        print(f"  {name:<44} {value:>18}  {target}")
