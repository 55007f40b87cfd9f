"""run_in_workers: worker processes reused between calls, results in the order of the jobs."""

import os

from sft_helpers.course import runs
from sft_helpers.course.runs import default_workers, run_in_workers


def test_default_workers_one_per_core_or_all_at_once_with_one_job_more():
    assert [default_workers(n, cores=2) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 3, 2, 2, 2]
    assert default_workers(3, cores=2, cuda=True) == 1


def test_worker_processes_are_reused_between_calls():
    first = run_in_workers(os.getpid, [{}, {}], workers=2)
    pool = runs._POOL[1]
    second = run_in_workers(os.getpid, [{}, {}, {}], workers=2)
    assert runs._POOL[1] is pool, "a second call of the same size started new processes"
    assert set(first) | set(second) <= set(pool._processes), "a job ran outside the pool"
    assert os.getpid() not in first + second


def test_results_come_back_in_job_order():
    jobs = [dict(a=i) for i in range(5)]
    assert run_in_workers(dict, jobs, workers=2) == jobs


def test_a_larger_call_grows_the_pool_and_smaller_calls_reuse_it():
    run_in_workers(os.getpid, [{}] * 3, workers=3)
    pool = runs._POOL[1]
    assert runs._POOL[0] == 3
    pids = run_in_workers(os.getpid, [{}] * 4, workers=2)
    assert runs._POOL[1] is pool and set(pids) <= set(pool._processes)


def test_stopping_the_workers_terminates_them_and_the_next_call_starts_new_ones():
    run_in_workers(os.getpid, [{}, {}], workers=2)
    processes = list(runs._POOL[1]._processes.values())
    runs._stop_workers()
    for process in processes:
        process.join(timeout=10)
    assert not any(process.is_alive() for process in processes) and not runs._POOL
    assert len(run_in_workers(os.getpid, [{}, {}], workers=2)) == 2
