"""setup.py's nvcc job count (build_jobs.py) on faked core and memory figures."""
import importlib.util
import pathlib

spec = importlib.util.spec_from_file_location("build_jobs", pathlib.Path(__file__).parents[1] / "build_jobs.py")
build_jobs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_jobs)
choose = build_jobs.choose_jobs
PER_JOB = build_jobs.PEAK_JOB_GIB


def test_enough_memory_gives_the_cores():
    assert choose(16, 16 * PER_JOB + 0.5)[0] == 16
    assert choose(2, 3 * PER_JOB)[0] == 2


def test_little_memory_bounds_the_count():
    assert choose(16, 3.5 * PER_JOB)[0] == 3
    jobs, why = choose(64, 8 * PER_JOB + 0.1)
    assert jobs == 8 and "64 cores" in why and f"{PER_JOB:.1f} GiB per job" in why


def test_tiny_memory_still_runs_one_job():
    assert choose(8, 0.5)[0] == 1
    assert choose(8, 0.0)[0] == 1


def test_max_jobs_from_the_environment_wins():
    assert choose(2, 1.0, "6") == (6, "MAX_JOBS set in the environment")
    assert choose(32, 512.0, "1")[0] == 1


def test_configure_sets_and_respects_max_jobs(monkeypatch):
    monkeypatch.setattr(build_jobs, "cores", lambda: 4)
    monkeypatch.setattr(build_jobs, "available_bytes", lambda: int(2.5 * PER_JOB * build_jobs.GIB))
    env = {}
    line = build_jobs.configure(env)
    assert env == {"MAX_JOBS": "2"} and "MAX_JOBS=2" in line and "4 cores" in line
    env = {"MAX_JOBS": "7"}
    assert "MAX_JOBS=7" in build_jobs.configure(env) and env == {"MAX_JOBS": "7"}


def test_machine_figures_are_sane():
    assert build_jobs.cores() >= 1
    avail = build_jobs.available_bytes()
    assert avail is None or avail > 0
