"""The host's physical memory (the ceiling of anything a process builds in host RAM), and byte counts
as people read them."""

import os


def host_memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 7.9e18 -> '7.0 EiB'."""
    for unit, size in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30),
                       ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
