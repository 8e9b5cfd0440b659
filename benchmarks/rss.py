"""Peak resident memory of this process, for the benchmarks (Linux ``/proc``)."""

from __future__ import annotations


def status_bytes(key: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last :func:`reset_peak`), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak-RSS counter (``clear_refs`` 5) and return the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")
