"""How the lessons run their experiments: jobs in worker processes (one CPU thread each, models
kept between calls) and results written into the Markdown tables of `docs/`."""

from __future__ import annotations

import json
import re
from pathlib import Path


def _in_worker(job: tuple) -> object:
    """`function(**kwargs)` in a worker process, on one CPU thread, without progress bars."""
    import os

    import torch

    os.environ["TQDM_DISABLE"] = "1"  # the parent shows one bar for all runs
    torch.set_num_threads(1)
    function, kwargs, drop_model = job
    result = function(**kwargs)
    if drop_model and isinstance(result, dict):
        result.pop("model", None)
    return result


_POOL: list = []  # [workers, executor]: worker processes kept between calls (imports paid once)


def _ignore_interrupts() -> None:
    """Worker start-up: leave Ctrl-C (and a notebook kernel's interrupt or shutdown) to the parent,
    which stops the workers itself (`_stop_workers`), instead of a traceback from every worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_pool(workers: int):
    """A pool of at least `workers` processes, reused by the next `run_in_workers`. Where the OS
    has it (Linux, macOS), they are forked from a server process that imported this module once
    (torch, transformers: ~10 s), instead of each importing it again; else spawned."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not _POOL or _POOL[0] < workers:
        if _POOL:
            _POOL[1].shutdown()
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["sft_helpers.course.experiments"])
        else:
            context = multiprocessing.get_context("spawn")
        _POOL[:] = [workers, ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts)]
    return _POOL[1]


def _stop_workers() -> None:
    """Terminate the worker processes (their runs are abandoned); the next call starts new ones."""
    if _POOL:
        pool = _POOL[1]
        if hasattr(pool, "terminate_workers"):  # Python 3.14+
            pool.terminate_workers()
        else:  # before 3.14 the executor has no public way to stop running work: its process table
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        _POOL.clear()


def _run_at_most(workers: int, tasks: list[tuple], bar) -> list:
    """`_in_worker(task)` for every task in the shared pool, at most `workers` at a time."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    pool, results, index, running = _worker_pool(workers), [None] * len(tasks), {}, set()
    try:
        for i, task in enumerate(tasks):
            if len(running) == workers:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[index[future]] = future.result()
                    bar.update(1)
            future = pool.submit(_in_worker, task)
            index[future] = i
            running.add(future)
        for future in running:
            results[index[future]] = future.result()
            bar.update(1)
    except (BrokenProcessPool, KeyboardInterrupt):
        _stop_workers()  # interrupted, or a worker died (out of memory?): no run left behind
        raise
    return results


def default_workers(n_jobs: int, cores: int, cuda: bool = False) -> int:
    """How many worker processes `run_in_workers` starts for `n_jobs` one-thread runs: one per CPU
    core, or all at once when there is one job more than cores (3 runs on 2 cores: else the third
    runs alone on one core after the others, the other core idle). More processes than that only
    take turns on the cores: 4 runs at once on 2 cores took longer than two rounds of 2 (caches
    shared between more processes). One (this process) on a GPU.

    >>> default_workers(3, cores=2), default_workers(4, cores=2), default_workers(1, cores=2)
    (3, 2, 1)
    """
    if cuda:
        return 1
    return n_jobs if n_jobs <= cores + 1 else cores


def run_in_workers(function, jobs: list[dict], workers: int | None = None, keep_models: bool = True,
                   desc: str = "runs") -> list:
    """`[function(**kwargs) for kwargs in jobs]`, computed side by side in worker processes, each on
    one CPU thread (small models train about as fast on one thread as on two), at most `workers`
    at a time (default: `default_workers`; on a GPU, one after the other in this process). The
    processes stay up for the next call, so torch and transformers are imported once per session. `function` must be importable (a module-level function such as
    `run_sft_variant` or `quick_sft`); results come back pickled (trained models too, unless
    `keep_models=False`), in the order of `jobs`.

    >>> run_in_workers(dict, [dict(a=1), dict(b=2)], workers=2)
    [{'a': 1}, {'b': 2}]
    """
    import os

    import torch

    from ..progress import progress_bar

    if workers is None:
        workers = default_workers(len(jobs), os.cpu_count() or 1, torch.cuda.is_available())
    bar = progress_bar(total=len(jobs), desc=desc, disable=len(jobs) < 2)
    results = []
    if workers <= 1:
        for kwargs in jobs:
            results.append(function(**kwargs))
            bar.update(1)
    else:
        results = _run_at_most(workers, [(function, kw, not keep_models) for kw in jobs], bar)
    bar.close()
    return results


def results_json(results: dict) -> str:
    """Stored results as JSON text, one key per line but each list of plain numbers on one line (a
    run's per-item scores stay one line, not hundreds).

    >>> print(results_json({"exact_items": [1, 0, 1], "name": "x"}), end="")
    {
     "exact_items": [1, 0, 1],
     "name": "x"
    }
    """
    text = json.dumps(results, indent=1, ensure_ascii=False)
    numbers = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")
    return numbers.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def merge_stored(stored: dict, results: dict) -> dict:
    """The `results` of a partial run (`--only`) laid over the `stored` ones: each group or sweep
    replaced whole, the others kept; a `seeds` map (`{sweep: [seed, ...]}`) merged key by key, so
    each kept sweep keeps its own seeds.

    >>> merge_stored({"a": 1, "b": 2, "seeds": {"a": [0], "b": [0]}}, {"b": 3, "seeds": {"b": [0, 1]}})
    {'a': 1, 'b': 3, 'seeds': {'a': [0], 'b': [0, 1]}}
    """
    merged = {**stored, **results}
    if isinstance(stored.get("seeds"), dict) and isinstance(results.get("seeds"), dict):
        merged["seeds"] = {**stored["seeds"], **results["seeds"]}
    return merged


def write_block(md: Path, name: str, title: str, body: str) -> None:
    """Write `body` into the Markdown file `md` between `<!-- name:start -->` and `<!-- name:end -->`,
    replacing what was there, or append it under a `## title` heading (a missing file is started).

    >>> import tempfile
    >>> md = Path(tempfile.mkdtemp()) / "x.md"; _ = md.write_text("# Results")
    >>> write_block(md, "a", "A", "one"); write_block(md, "a", "A", "two"); print(md.read_text())
    # Results
    <BLANKLINE>
    ## A
    <BLANKLINE>
    <!-- a:start -->
    two
    <!-- a:end -->
    <BLANKLINE>
    """
    text = md.read_text(encoding="utf-8") if md.exists() else "# Lesson experiments across seeds\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    md.write_text(text, encoding="utf-8")

