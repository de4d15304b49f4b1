"""The data dir's layout: which folder under it holds what. The one place these names live.

    DATA_DIR/
      index/          the live document index (retriever.index.Retriever)
      adapters/       the adapter registry (tuner.registry.Registry)
      files/          uploaded training and eval files (POST /v1/files)
      jobs/           tuning jobs, one folder each, and their store jobs.db
      evals/          eval runs, one folder each; evals/.indexes/ keeps datasets' indexes
      sweeps/         hyperparameter sweeps, one folder each (the Optuna study, the report)
      models/         converted and downloaded model weights (unless models_dir says otherwise)

It lives in the tuner, the lowest package that writes under the data dir (the trainers register
adapters, the training worker finds its data dir from its job folder). It knows nothing of
settings: the service builds one from ``Settings.data_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOBS = "jobs"
EVALS = "evals"
SWEEPS = "sweeps"


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / JOBS

    @property
    def evals(self) -> Path:
        return self.root / EVALS

    @property
    def eval_indexes(self) -> Path:
        return self.evals / ".indexes"

    @property
    def sweeps(self) -> Path:
        return self.root / SWEEPS

    @property
    def answers(self) -> Path:
        return self.root / "answers.sqlite"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def job(self, name: str) -> Path:
        """The folder of one tuning job (``cli-NAME``, ``eval-fix-NAME`` or a job id)."""
        return self.jobs / name

    @classmethod
    def of_job(cls, job_dir: Path) -> DataLayout:
        """The layout a job folder sits in (``DATA_DIR/jobs/ID``)."""
        return cls(job_dir.resolve().parent.parent)
