"""The process of one evaluation run started over HTTP: ``python -m eval.worker <run_dir>``.

The service's job runner (``tuner.jobs.JobRunner`` with ``folder="evals"``) writes
``run_dir/recipe.json`` (the run's spec: ``{"name", "file_id", "options"}``, where ``options``
are ``eval.config.EvalOptions`` with ``dataset`` and ``retrieved`` relative to ``run_dir``) and
``run_dir/job.json`` (the job id and the service's settings, secrets left out), and prepares
``dataset.jsonl`` and, for a run against the live index, ``retrieved.jsonl``. This process runs
the harness into ``run_dir/report``, records progress in the job store (``run_dir/../jobs.db``),
polls the cancel flag, beats a heartbeat, and records the outcome: succeeded, cancelled, or
failed with the error (the traceback goes to stderr, which the runner sends to
``run_dir/log.txt``). Exits 0 unless the run failed.

Never opens the live index (the service holds its lock): its retrieval was precomputed. Knows
nothing of HTTP or of how the harness works.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.config import EvalOptions
from tuner.jobstore import record_failure, start_heartbeat
from tuner.pgjobs import worker_store

log = logging.getLogger("eval.worker")
Run = Callable[..., dict[str, Any]]  # eval.harness.run_eval's signature


def read_options(run_dir: Path, spec: dict[str, Any]) -> EvalOptions:
    """The run's ``EvalOptions``, with relative dataset paths taken from ``run_dir``."""
    raw = dict(spec.get("options") or {})
    for key in ("dataset", "retrieved"):
        if raw.get(key) is not None and not Path(raw[key]).is_absolute():
            raw[key] = str(run_dir / raw[key])
    return EvalOptions.from_dict(raw)


def run_job(run_dir: Path, run_eval: Run, cancelled: type[BaseException]) -> int:
    """Evaluate the run in ``run_dir`` with ``run_eval``; return the process exit code."""
    run_dir = run_dir.resolve()
    store = worker_store(run_dir)
    job = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    job_id = job["id"]
    stop = start_heartbeat(store, job_id)
    try:
        spec = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
        options = read_options(run_dir, spec)
        run_eval(
            options,
            out=run_dir / "report",
            settings=_settings(job.get("settings")),
            progress=lambda done, total: store.progress(job_id, done, total, None, None),
            should_stop=lambda: store.cancel_requested(job_id),
        )
    except cancelled:
        log.info("run %s cancelled", job_id)
        store.finish(job_id, "cancelled")
        return 0
    except ValueError as exc:  # bad options or data: the message says what to fix
        log.error("run %s failed: %s", job_id, exc)
        store.finish(job_id, "failed", error=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
        record_failure(store, job_id, run_dir, exc)
        return 1
    finally:
        stop.set()
    store.finish(job_id, "succeeded")
    log.info("run %s succeeded: %s", job_id, run_dir / "report")
    return 0


def _settings(values: dict[str, Any] | None) -> Any:
    """The service's settings as the runner passed them; else from the environment."""
    from service.settings import Settings

    return Settings(**(values or {}))


def main(
    argv: list[str] | None = None,
    run: Run | None = None,
    cancelled: type[BaseException] | None = None,
) -> int:
    """``run`` defaults to ``eval.harness.run_eval`` and ``cancelled`` to the
    ``tuner.hooks.Cancelled`` it raises when stopped; tests pass stand-ins."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m eval.worker RUN_DIR\n")
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if run is None:
        from eval.harness import run_eval

        run = run_eval
    if cancelled is None:
        from tuner.hooks import Cancelled

        cancelled = Cancelled
    return run_job(Path(args[0]), run, cancelled)


if __name__ == "__main__":
    sys.exit(main())
