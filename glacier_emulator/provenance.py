"""What a measurement ran on: one description of the machine for every benchmark and model card.

The scripts in ``scripts/`` (benchmarks, ``evaluate_model.py``) store :func:`machine_info` next
to their numbers and print :func:`describe_machine` in their reports, so a timing can always be
traced to the CPU, its load and the memory it had.
"""

from __future__ import annotations

import os
import platform


def load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages (other work on the machine skews timings), if known."""
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _first_line_value(path: str, prefix: str) -> str | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """Platform, CPU model and count (and how many this process may use), memory, load now."""
    memory = _first_line_value("/proc/meminfo", "MemTotal")
    try:
        memory_gib = round(int(memory.split()[0]) / 2**20, 1) if memory else None
    except (ValueError, IndexError):
        memory_gib = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _first_line_value("/proc/cpuinfo", "model name"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "load_average_start": load_average(),
    }


def describe_machine(machine: dict) -> str:
    """One line for a report: CPU, CPUs usable, memory, platform, and the load if recorded."""
    cpus = machine.get("cpu_count")
    usable = machine.get("cpus_usable", cpus)
    name = machine.get("cpu_model") or machine.get("processor") or "unknown CPU"
    text = f"{name}, {cpus} CPUs" if usable == cpus else f"{name}, {usable} usable of {cpus} CPUs"
    if machine.get("memory_gib"):
        text += f", {machine['memory_gib']} GiB"
    text += f", {machine.get('platform', 'unknown platform')}"
    loads = [f"{machine[key]} at the {when}" for key, when in
             (("load_average_start", "start"), ("load_average_end", "end")) if machine.get(key)]
    if loads:
        text += "; load averages (1, 5, 15 min) " + ", ".join(loads)
    return text
