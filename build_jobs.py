"""How many nvcc jobs the kernel build runs at once when MAX_JOBS is unset: as many as
there are cores, but no more than fit in the available memory at the measured peak of
one job, and at least one. Imported by setup.py; choose_jobs is pure so tests can
fake the machine."""
import os

# Peak RSS of the largest compile job, rounded up: a Machete tile unit of four tiles, whose
# cicc peaks at 7.32 GiB (/usr/bin/time -v on its nvcc line; README, Build).
PEAK_JOB_GIB = 7.5
GIB = 1 << 30


def choose_jobs(cores: int, available_gib: float, max_jobs_env: str | None = None,
                per_job_gib: float = PEAK_JOB_GIB) -> tuple[int, str]:
    """(jobs, the reason in words). A numeric MAX_JOBS from the environment wins."""
    if max_jobs_env is not None and max_jobs_env.strip().isdigit():
        return int(max_jobs_env), "MAX_JOBS set in the environment"
    by_memory = int(available_gib // per_job_gib)
    jobs = max(1, min(cores, by_memory))
    return jobs, (f"min({cores} cores, {available_gib:.1f} GiB available / {per_job_gib:.1f} GiB per job "
                  f"= {by_memory}), at least 1; set MAX_JOBS to override")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cores() -> int:
    """CPUs this process may run on, capped by a cgroup v2 CPU quota if one is set."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = (_read("/sys/fs/cgroup/cpu.max") or "max").split()
    if quota[0] != "max" and len(quota) == 2:
        n = min(n, max(1, -(-int(quota[0]) // int(quota[1]))))
    return n


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, lowered to the cgroup's headroom (v2 or v1)
    when a memory limit is set; None when neither can be read."""
    found = []
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            found.append(int(line.split()[1]) * 1024)
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read(limit_path), _read(usage_path)
        # v1 reports "no limit" as a huge number, v2 as "max".
        if limit and usage and limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:
            found.append(int(limit) - int(usage))
    return min(found) if found else None


def configure(environ=os.environ) -> str:
    """Sets environ["MAX_JOBS"] by the rule above (unless set) and returns the line that
    says what was chosen and why."""
    avail = available_bytes()
    if avail is None and environ.get("MAX_JOBS") is None:
        return "[vllm-machete-plugin] nvcc jobs: available memory unknown, leaving the count to ninja"
    jobs, why = choose_jobs(cores(), (avail or 0) / GIB, environ.get("MAX_JOBS"))
    environ["MAX_JOBS"] = str(jobs)
    return f"[vllm-machete-plugin] nvcc jobs: MAX_JOBS={jobs} ({why})"
