"""What an evaluation run is asked to do: one dataclass, checked when it is made, and what
each answering mode does.

``ragtune eval`` builds it from its options, the eval worker from the run's ``spec.json``; each
run folder keeps it as ``metrics.json["run"]["options"]``. The rest of ``eval`` asks what a mode
does only through ``retrieves``, ``needs_adapter``, ``demonstrates`` and ``serving_mode`` (and
``diagnosed_mode``). The serving modes (base, rag, ft, hybrid) are described once, in
``service.pipeline.MODES``; the eval harness adds the two in-context modes, each a serving mode
with demonstrations before the question (``ICL_MODES``: icl is base with shots, rag-icl is rag
with shots), which only the harness can answer (it holds the demonstrations). Knows nothing of
models or HTTP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from service.bounds import (
    BOOTSTRAP_SEED_MAX,
    EVAL_QUESTIONS_MAX,
    K_MAX,
    NEW_TOKENS_MAX,
    RESAMPLES_MAX,
    RESAMPLES_MIN,
)
from service.pipeline import MODES as ANSWER_MODES
from service.pipeline import answer_mode

ICL_MODES = {"icl": "base", "rag-icl": "rag"}  # in-context mode -> the serving mode it extends
MODES = ("base", "icl", "rag", "rag-icl", "ft", "hybrid")  # every mode a run can compare
DEFAULT_MODES = tuple(ANSWER_MODES)  # base, rag, ft, hybrid: described in service.pipeline
assert set(MODES) == set(ANSWER_MODES) | set(ICL_MODES)
SHOTS_FROM = ("auto", "train", "synth")
SHOT_CHOICES = ("similar", "random")
BOUNDS = {  # option -> (least, most); the HTTP edge (service.routes.evals) has the same
    "k": (1, K_MAX),
    "depth": (1, K_MAX),
    "max_new_tokens": (1, NEW_TOKENS_MAX),
    "limit": (1, EVAL_QUESTIONS_MAX),
    "seed": (0, BOOTSTRAP_SEED_MAX),
    "resamples": (RESAMPLES_MIN, RESAMPLES_MAX),
    "batch": (1, 256),
    "injection_n": (1, 10_000),
    "shots": (1, 32),
}


def serving_mode(mode: str) -> str:
    """The serving mode (``service.pipeline.MODES``) whose prompt and adapter ``mode`` uses."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return ICL_MODES.get(mode, mode)


def demonstrates(mode: str) -> bool:
    """Whether ``mode`` puts question/answer demonstrations before the question (icl, rag-icl)."""
    return mode in ICL_MODES


def retrieves(mode: str) -> bool:
    """Whether ``mode`` puts retrieved passages in the prompt (rag, rag-icl, hybrid)."""
    return answer_mode(serving_mode(mode)).retrieves


def needs_adapter(mode: str) -> bool:
    """Whether ``mode`` answers with a fine-tuned generator adapter (ft, hybrid)."""
    return answer_mode(serving_mode(mode)).uses_adapter


def diagnosed_mode(modes: tuple[str, ...]) -> str | None:
    """The retrieving mode whose wrong answers the diagnosis classes: the first of ``MODES``
    (rag, then rag-icl, then hybrid) that ``modes`` has; None when it has none."""
    return next((m for m in MODES if retrieves(m) and m in modes), None)


@dataclass
class EvalOptions:
    dataset: Path | None = None
    """BEIR folder, SQuAD-style JSONL, or a plain question/answer JSONL (with ``live``)."""
    live: bool = False
    """Ask the questions against the live index instead of a fresh index of the dataset."""
    modes: tuple[str, ...] = DEFAULT_MODES
    """Systems to compare, all on the same questions with the same decoding (any of ``MODES``)."""
    k: int = 3
    """Passages put in the prompt (and cited) in rag and hybrid modes."""
    depth: int = 20
    """Passages retrieved per question for the recall@k curve (at least ``k``)."""
    max_new_tokens: int = 64
    """Greedy decoding budget per answer, the same in every mode."""
    limit: int | None = None
    """Only the first N questions."""
    seed: int = 0
    """Seed of the bootstrap resampling (and of the injection probe's sample)."""
    resamples: int = 10_000
    """Bootstrap resamples for every interval."""
    ft_adapter: str | None = None
    """Registry id of the adapter for ft mode (default: the promoted generator adapter)."""
    hybrid_adapter: str | None = None
    """Registry id of the adapter for hybrid mode (default: the ft adapter, else promoted)."""
    embedder_adapter: str | None = None
    """A fine-tuned embedder (registry id) for the fresh index (default: the index's own)."""
    probes: bool = True
    """Run the forgetting probe (adapters) and the prompt-injection probe."""
    injection_n: int = 30
    """Questions sampled for the injection probe."""
    batch: int = 16
    """Answers generated together (the engine's batch)."""
    correct_f1: float = 0.5
    """An answer counts as right when its token F1 reaches this (or it matches exactly)."""
    judge: str | None = None
    """Optional LLM judge, ``module:function`` (off by default); see ``eval.judge``."""
    retrieved: Path | None = None
    """Precomputed live retrieval (``retrieved.jsonl``) from the process that holds the index."""
    shots: int = 3
    """Demonstrations (question/answer turns) before the question in icl and rag-icl."""
    shots_from: str = "auto"
    """Where demonstrations come from: ``train`` (the dataset's training split), ``synth``
    (questions synthesised from the indexed documents), ``auto`` (train when the dataset has
    one, else synth). Never a question the run asks."""
    shot_choice: str = "similar"
    """How each question's demonstrations are chosen: ``similar`` (nearest by the run's
    embedder) or ``random`` (seeded by ``seed``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form labels stored with the run."""

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes: choose from {', '.join(MODES)}; got {list(self.modes)}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes: each mode once; got {list(self.modes)}")
        for name, (least, most) in BOUNDS.items():
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            number = isinstance(value, int) and not isinstance(value, bool)
            if not number or not least <= value <= most:
                raise ValueError(f"{name}: must be an integer in [{least}, {most}], got {value!r}")
        if self.shots_from not in SHOTS_FROM:
            raise ValueError(
                f"shots_from: choose from {', '.join(SHOTS_FROM)}; got {self.shots_from!r}"
            )
        if self.shot_choice not in SHOT_CHOICES:
            raise ValueError(
                f"shot_choice: choose from {', '.join(SHOT_CHOICES)}; got {self.shot_choice!r}"
            )
        if self.depth < self.k:
            raise ValueError(f"depth: must be >= k ({self.k}), got {self.depth}")
        if not 0.0 < self.correct_f1 <= 1.0:
            raise ValueError(f"correct_f1: must be in (0, 1], got {self.correct_f1}")
        if self.dataset is None and self.retrieved is None:
            raise ValueError("dataset: a BEIR folder or a JSONL file is needed")
        if self.dataset is not None:
            self.dataset = Path(self.dataset)
        if self.retrieved is not None:
            self.retrieved = Path(self.retrieved)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modes"] = list(self.modes)
        for key in ("dataset", "retrieved"):
            out[key] = None if out[key] is None else str(out[key])
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalOptions:
        """From ``to_dict`` output; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown eval options: {', '.join(unknown)}")
        return cls(**raw)
