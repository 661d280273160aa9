"""How much memory this process may still allocate: the machine's available memory, or
less where a cgroup (a container, a Slurm job) or an address-space limit (`ulimit -v`)
limits the process."""
from __future__ import annotations

try:
    import resource
except ImportError:  # not POSIX: no address-space limit to read
    resource = None

__all__ = ["available_bytes"]

# cgroup v2 and v1: (limit, usage)
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                 "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_bytes() -> int | None:
    """Bytes this process can allocate before it swaps or is killed; None where the
    system does not say (not Linux)."""
    found = [n for n in (_meminfo_available(), *(_cgroup_room(*f) for f in CGROUP_FILES),
                         _address_space_room()) if n is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(limit_file: str, usage_file: str) -> int | None:
    """The cgroup's limit less its usage; None without a limit ("max", or v1's huge one)."""
    try:
        with open(limit_file) as handle:
            limit = handle.read().strip()
        with open(usage_file) as handle:
            usage = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    if not limit.isdigit() or int(limit) >= 1 << 60:
        return None
    return max(int(limit) - usage, 0)


def _address_space_room() -> int | None:
    """RLIMIT_AS less the address space in use (VmSize); None without a limit."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return None
