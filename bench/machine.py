"""What every bench table starts with: the machine the figures were measured on.

These machines are shared and noisy, so the load average goes in with the CPU and RAM.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def describe_machine(**extra: str) -> dict[str, str]:
    """CPU model, cores (and how many this process may use), RAM, load, Python; plus `extra`
    (library versions a bench depends on)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "RAM": ram,
        "load average (1/5/15 min)": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "Python": platform.python_version(),
        **extra,
    }


def machine_line(**extra: str) -> str:
    """`describe_machine` on one line, for a table's caption."""
    return "; ".join(f"{name} {value}" for name, value in describe_machine(**extra).items())
