"""A fast stand-in for the eval harness, run as the eval worker: ``python -m
tests.service.fake_eval_worker RUN_DIR`` (the real ``eval.worker`` code with this harness).

It counts the run's questions (``retrieved.jsonl`` for a live run, else ``dataset.jsonl``),
reports one progress step per question, sleeping ``FAKE_STEP_S`` seconds (default 0.02) before
each and stopping when cancelled, then writes ``metrics.json``, ``report.html`` and
``report.md``; the metrics say what it was given. Seed 666 makes it refuse the data.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class Cancelled(Exception):
    pass


def run_eval(options: Any, *, out: Path, settings: Any, progress: Any, should_stop: Any) -> dict:
    if options.seed == 666:
        raise ValueError("dataset.jsonl:1: the fake harness refuses this data")
    source = options.retrieved if options.live else options.dataset
    rows = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    pause = float(os.environ.get("FAKE_STEP_S", "0.02"))
    for done in range(1, len(rows) + 1):
        time.sleep(pause)
        progress(done, len(rows))
        if should_stop():
            raise Cancelled(f"stopped after {done}")
    first = rows[0]["hits"][0]["doc_id"] if options.live and rows[0]["hits"] else None
    metrics = {
        "run": {"options": options.to_dict(), "data_dir": str(settings.data_dir)},
        "questions": len(rows),
        "first_hit": first,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "report.html").write_text(f"<h1>Evaluation</h1><p>{len(rows)} questions</p>")
    (out / "report.md").write_text(f"# Evaluation\n\n{len(rows)} questions\n")
    return metrics


if __name__ == "__main__":
    from eval.worker import main

    sys.exit(main(run=run_eval, cancelled=Cancelled))
