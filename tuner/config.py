"""Tuning recipes: what to train (method, data) and how (hyperparameters), as dataclasses.

A recipe is YAML under ``configs/`` (or a dict from the jobs API), read by ``load_recipe`` with
optional ``a.b=value`` overrides. Every field has a default and a help note; ``__post_init__``
raises ``ValueError`` naming the field and the bad value. Knows nothing of models or data files.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retriever.config import SEARCH_MODES
from tuner.registry import NAME_RULE, valid_name

METHODS = (
    "lora",
    "dora",
    "ia3",
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
    "full",
    "qlora",
    "kto",
    "dpo",
)
# Preference tuning (TRL's trainers) of a LoRA adapter on rated answers or preference files.
PREFERENCE_METHODS = ("kto", "dpo")
# Methods whose adapters are a LoRA a preference method can continue.
LORA_LIKE = ("lora", "dora", "kto", "dpo")
PROMOTED = "promoted"  # a preference recipe's parent: the promoted adapter, else the base model
RETRIEVER_METHODS = ("full", "lora")
COMPONENTS = ("generator", "retriever")
FORMATS = ("auto", "alpaca", "chat", "prompt_completion")
TEMPLATES = ("chat", "qa", "summarization", "translation", "classification")
SYNTHETIC_KINDS = ("qa", "raft", "closed_book", "pairs")
SCHEDULERS = ("linear", "cosine", "constant")
TRAINING_SEED_MAX = 2**32 - 1  # numpy's legacy seed, which transformers' set_seed sets too

# What each number of a recipe may be, in pydantic's words (ge/gt/le/lt): checked in
# ``__post_init__`` below, and at the HTTP edge from these same tables (``service.bounds``).
HYPERPARAMETER_BOUNDS: dict[str, dict[str, float]] = {
    "learning_rate": {"gt": 0, "le": 1},
    "batch_size": {"ge": 1, "le": 1024},
    "grad_accum": {"ge": 1, "le": 1024},
    "epochs": {"gt": 0, "le": 1000},
    "max_steps": {"ge": 1, "le": 1_000_000},
    "weight_decay": {"ge": 0, "le": 10},
    "warmup_ratio": {"ge": 0, "lt": 1},
    "rank": {"ge": 1, "le": 1024},
    "alpha": {"ge": 1, "le": 4096},
    "dropout": {"ge": 0, "lt": 1},
    "num_virtual_tokens": {"ge": 1, "le": 1024},
    "max_length": {"ge": 8, "le": 32_768},
    "seed": {"ge": 0, "le": TRAINING_SEED_MAX},
    "val_fraction": {"ge": 0, "lt": 1},
    "test_fraction": {"ge": 0, "lt": 1},
    "eval_every": {"ge": 1, "le": 1_000_000},
    "early_stopping_patience": {"ge": 1, "le": 1000},
    "checkpoint_every": {"ge": 1, "le": 1_000_000},
    "max_grad_norm": {"ge": 0, "le": 1000},  # 0: no clipping
}
TARGET_MODULES_MAX = 64  # module names in ``target_modules``
TARGET_MODULE_MAX_CHARS = 128
SYNTHETIC_BOUNDS: dict[str, dict[str, float]] = {
    "max_examples": {"ge": 1, "le": 100_000},
    "distractors": {"ge": 0, "le": 20},
    "p_gold": {"ge": 0, "le": 1},
    "answer_words": {"ge": 0, "le": 1000},
    "seed": {"ge": 0, "le": TRAINING_SEED_MAX},
}
RETRIEVER_BOUNDS: dict[str, dict[str, float]] = {
    "negatives": {"ge": 0, "le": 50},
    "margin": {"gt": 0, "le": 1},
}
WINDOW_MAX = 200  # the deepest rank searched for negatives
WEIGHT_BOUNDS: dict[str, float] = {"gt": 0, "le": 1000}  # a dataset's share in a mix
# What a sweep optimises: the trial's metric in its registry record, and which way is better.
# Only val_loss is reported while a trial trains, so only it can prune a trial early.
# eval: an answer metric of a short eval run of each trial's adapter (``sweep.eval``).
SWEEP_OBJECTIVES = {
    "val_loss": "minimize",
    "recall@10": "maximize",
    "reward_accuracy": "maximize",
    "eval": "maximize",
}
SWEEP_EVAL_METRICS = (
    "token_f1",
    "rouge_l",
    "exact_match",
    "groundedness",
    "citation_precision",
    "citation_recall",
)
SWEEP_EVAL_MODES = ("hybrid", "ft")
SWEEP_EVAL_BOUNDS: dict[str, dict[str, float]] = {
    "limit": {"ge": 1, "le": 100_000},
    "k": {"ge": 1, "le": 50},
    "max_new_tokens": {"ge": 1, "le": 4096},
}
SWEEP_EVAL_DATASET_MAX_CHARS = 4096
SWEEP_PRUNERS = ("median", "hyperband", "none")
SWEEP_PARAM_TYPES = ("log_uniform", "uniform", "int", "categorical")
SWEEP_BOUNDS: dict[str, dict[str, float]] = {
    "trials": {"ge": 1, "le": 1000},
    "timeout_s": {"gt": 0, "le": 30 * 86400},
    "seed": {"ge": 0, "le": TRAINING_SEED_MAX},
}
SWEEP_PARAMS_MAX = 32
SWEEP_PARAM_BOUNDS: dict[str, dict[str, float]] = {
    "low": {"ge": -1e9, "le": 1e9},
    "high": {"ge": -1e9, "le": 1e9},
    "step": {"gt": 0, "le": 1e9},
}
SWEEP_CHOICES_MAX = 64
SWEEP_CHOICE_MAX_CHARS = 200
# Recipe keys a trial may not change: what it is and what it trains on.
SWEEP_FIXED = ("name", "method", "component", "base_model", "parent", "sweep", "retriever.activate")
PREFERENCE_BOUNDS: dict[str, dict[str, float]] = {
    "beta": {"gt": 0, "le": 100},
    "held_out": {"ge": 0, "lt": 1},
    "max_pairs_per_question": {"ge": 1, "le": 1000},
    "sft_weight": {"ge": 0, "le": 100},
}


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {want}, got {value!r}")


def _range(bound: dict[str, float]) -> str:
    low = f"[{bound['ge']}" if "ge" in bound else f"({bound['gt']}"
    high = f"{bound['le']}]" if "le" in bound else f"{bound['lt']})"
    return f"{low}, {high}"


def _within(value: float, bound: dict[str, float]) -> bool:
    return (
        value >= bound.get("ge", value)
        and value <= bound.get("le", value)
        and ("gt" not in bound or value > bound["gt"])
        and ("lt" not in bound or value < bound["lt"])
    )


def _check_bounds(obj: Any, bounds: dict[str, dict[str, float]], prefix: str) -> None:
    """Each bounded field of dataclass ``obj`` is a number (an integer where its type says int)
    within its bound; None passes where the type allows it."""
    types = {f.name: str(f.type) for f in dataclasses.fields(obj)}
    for name, bound in bounds.items():
        value, kind = getattr(obj, name), types[name]
        if value is None and "None" in kind:
            continue
        integer = "float" not in kind
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (isinstance(value, int) or not integer) and _within(value, bound)
        what = "an integer" if integer else "a number"
        _check(ok, f"{prefix}{name}", value, f"must be {what} in {_range(bound)}")


@dataclass
class Hyperparameters:
    # peak learning rate; None: 2e-4 (generator), 2e-5 (retriever full), 1e-4 (retriever lora)
    learning_rate: float | None = None
    batch_size: int | None = None  # examples per step per process; None: 4 (generator), 32
    # (retriever: in-batch negatives want big batches)
    grad_accum: int = 1  # steps accumulated per optimizer update
    epochs: float = 1.0  # passes over the training split (ignored when max_steps is set)
    max_steps: int | None = None  # optimizer updates in all; overrides epochs
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # share of the updates spent warming up linearly
    scheduler: str = "linear"  # linear | cosine | constant (after warmup)
    rank: int = 8  # LoRA/DoRA rank
    alpha: int = 16  # LoRA/DoRA alpha
    dropout: float = 0.05  # LoRA/DoRA dropout
    target_modules: list[str] | str | None = None  # None: the method's default for the model
    num_virtual_tokens: int = 16  # prefix/prompt/p-tuning
    max_length: int = 512  # tokens per example; longer ones are refused at validation
    seed: int = 42
    val_fraction: float = 0.1  # share of examples held out for validation loss
    test_fraction: float = 0.0  # share held out for a test split (written, never trained on)
    eval_every: int = 20  # optimizer updates between validation passes
    early_stopping_patience: int | None = None  # validation passes without improvement
    checkpoint_every: int = 20  # optimizer updates between resumable checkpoints
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_bounds(self, HYPERPARAMETER_BOUNDS, "hyperparameters.")
        _check_target_modules(self.target_modules)
        _check(
            self.scheduler in SCHEDULERS,
            "hyperparameters.scheduler",
            self.scheduler,
            f"one of {SCHEDULERS}",
        )
        _check(
            self.val_fraction + self.test_fraction < 1,
            "hyperparameters.test_fraction",
            self.test_fraction,
            "must leave examples to train on (val_fraction + test_fraction < 1)",
        )


def _check_target_modules(value: Any) -> None:
    names = [value] if isinstance(value, str) else value
    ok = value is None or (
        isinstance(names, list)
        and 0 < len(names) <= TARGET_MODULES_MAX
        and all(isinstance(n, str) and 0 < len(n) <= TARGET_MODULE_MAX_CHARS for n in names)
    )
    want = (
        f"a module name or a list of 1 to {TARGET_MODULES_MAX}, each 1-{TARGET_MODULE_MAX_CHARS} "
        "characters"
    )
    _check(ok, "hyperparameters.target_modules", value, want)


@dataclass
class SyntheticSpec:
    """Training data made from the live index instead of a file."""

    # qa (question -> answer, closed book) | raft (with passages) | closed_book | pairs (for the
    # retriever: a sentence of a chunk as the query, the rest of the chunk as its positive)
    kind: str = "raft"
    generator: str = "extractive"  # extractive | model (the generator writes the questions)
    max_examples: int = 500
    distractors: int = 3  # raft: retrieved passages that do not hold the answer
    p_gold: float = 0.8  # raft: share of examples whose prompt holds the gold passage
    answer_words: int = 0  # raft: extend the answer with the passage's next sentences to ~N words
    seed: int = 42

    def __post_init__(self) -> None:
        _check(
            self.kind in SYNTHETIC_KINDS, "synthetic.kind", self.kind, f"one of {SYNTHETIC_KINDS}"
        )
        _check(
            self.generator in ("extractive", "model"),
            "synthetic.generator",
            self.generator,
            "extractive or model",
        )
        _check_bounds(self, SYNTHETIC_BOUNDS, "synthetic.")


@dataclass
class FeedbackSpec:
    """Training data from the ratings users gave answers (the service's answer log). Ratings
    whose passages have changed since (stale) are always left out: the prompt the user saw can
    no longer be rebuilt."""

    corrections: bool = True  # a correction is a desirable answer (KTO) or the chosen one (DPO)
    since: float | None = None  # only ratings given or updated at or after this Unix time

    def __post_init__(self) -> None:
        _check(
            isinstance(self.corrections, bool),
            "feedback.corrections",
            self.corrections,
            "true or false",
        )
        ok = self.since is None or (
            isinstance(self.since, int | float)
            and not isinstance(self.since, bool)
            and 0 <= self.since <= 1e11
        )
        _check(ok, "feedback.since", self.since, "a Unix time in seconds, or null")


@dataclass
class PreferenceTuning:
    """How kto and dpo train (TRL's KTOTrainer and DPOTrainer) and what they hold out."""

    beta: float = 0.1  # how far the tuned model may move from its parent (higher: less)
    held_out: float = 0.2  # share of the rows never trained on, for reward accuracy
    # dpo: a question with several up- and down-rated answers gives at most this many pairs
    max_pairs_per_question: int = 4
    # dpo: weight of a negative log-likelihood term on the chosen answer beside the DPO loss
    # (RPO; 1.0 in the paper). DPO alone can lower the chosen answer's likelihood too; the
    # term keeps it up, so the model learns to write what was preferred. 0: plain DPO.
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_bounds(self, PREFERENCE_BOUNDS, "preference.")


@dataclass
class DataSpec:
    """One training dataset: a JSONL file (a path, or an uploaded file id) or synthetic data."""

    path: str | None = None
    file_id: str | None = None  # a file uploaded with POST /v1/files
    format: str = "auto"  # auto | alpaca | chat | prompt_completion
    template: str = "chat"  # chat | qa | summarization | translation | classification
    weight: float = 1.0  # share in a multi-task mix, relative to the other datasets
    synthetic: SyntheticSpec | None = None
    feedback: FeedbackSpec | None = None  # kto/dpo: rated answers from the answer log

    def __post_init__(self) -> None:
        if isinstance(self.synthetic, dict):
            self.synthetic = SyntheticSpec(**self.synthetic)
        if isinstance(self.feedback, dict):
            self.feedback = FeedbackSpec(**self.feedback)
        given = [
            x for x in (self.path, self.file_id, self.synthetic, self.feedback) if x is not None
        ]
        _check(
            len(given) == 1,
            "dataset",
            self,
            "needs exactly one of path, file_id, synthetic, feedback",
        )
        _check(self.format in FORMATS, "dataset.format", self.format, f"one of {FORMATS}")
        _check(self.template in TEMPLATES, "dataset.template", self.template, f"one of {TEMPLATES}")
        _check_bounds(self, {"weight": WEIGHT_BOUNDS}, "dataset.")


@dataclass
class RetrieverTuning:
    """How the retriever tuner mines hard negatives and what it does after training."""

    negatives: int = 3  # hard negatives per pair, mined from the live index
    window: tuple[int, int] = (
        3,
        30,
    )  # ranks searched for negatives (the top is often a paraphrase)
    margin: float = 0.95  # a hit scoring >= margin * the positive's score is not a negative
    mine_mode: str = "hybrid"  # dense | sparse | hybrid: the search that mines them
    cached: bool = False  # CachedMultipleNegativesRankingLoss (big batches in little memory)
    activate: bool = True  # re-embed the index with the result (shadow, then atomic switch)

    def __post_init__(self) -> None:
        window = tuple(self.window)  # YAML and JSON give lists
        _check_bounds(self, RETRIEVER_BOUNDS, "retriever.")
        _check(
            len(window) == 2
            and all(isinstance(w, int) and not isinstance(w, bool) for w in window)
            and 0 <= window[0] < window[1] <= WINDOW_MAX,
            "retriever.window",
            self.window,
            f"[start, end] with 0 <= start < end <= {WINDOW_MAX}",
        )
        self.window = (window[0], window[1])
        _check(
            self.mine_mode in SEARCH_MODES,
            "retriever.mine_mode",
            self.mine_mode,
            "dense, sparse or hybrid",
        )


@dataclass
class SweepParam:
    """One searched field: ``log_uniform`` and ``uniform`` (low, high), ``int`` (low, high,
    optional step, or log), ``categorical`` (choices)."""

    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None  # int: the grid step (default 1); uniform: a grid, if set
    log: bool = False  # int: sample on a log scale
    choices: list[Any] | None = None

    def check(self, path: str) -> None:
        where = f"sweep.space.{path}"
        _check(
            self.type in SWEEP_PARAM_TYPES,
            f"{where}.type",
            self.type,
            f"one of {SWEEP_PARAM_TYPES}",
        )
        _check(isinstance(self.log, bool), f"{where}.log", self.log, "true or false")
        if self.type == "categorical":
            ok = isinstance(self.choices, list) and 0 < len(self.choices) <= SWEEP_CHOICES_MAX
            ok = ok and all(
                c is None
                or isinstance(c, int | float | bool)
                or (isinstance(c, str) and len(c) <= SWEEP_CHOICE_MAX_CHARS)
                for c in self.choices or []
            )
            want = f"a list of 1 to {SWEEP_CHOICES_MAX} plain values"
            _check(ok, f"{where}.choices", self.choices, want)
            assert self.choices is not None
            # Optuna tells choices apart by equality: 1 and true (or 1 and 1.0) are one choice
            distinct = len(set(self.choices)) == len(self.choices)  # {1, True, 1.0} is one
            _check(distinct, f"{where}.choices", self.choices, "each value once")
            for name in ("low", "high", "step"):
                _check(
                    getattr(self, name) is None,
                    f"{where}.{name}",
                    getattr(self, name),
                    "unset for categorical",
                )
            _check(not self.log, f"{where}.log", self.log, "unset for categorical")
            return
        _check(self.choices is None, f"{where}.choices", self.choices, f"unset for {self.type}")
        for side in ("low", "high"):
            value = getattr(self, side)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if self.type == "int":
                ok = ok and float(value).is_integer()
            _check(
                ok, f"{where}.{side}", value, f"a number{' (whole)' if self.type == 'int' else ''}"
            )
        assert self.low is not None and self.high is not None
        _check_bounds(self, SWEEP_PARAM_BOUNDS, f"{where}.")
        _check(self.low < self.high, f"{where}.high", self.high, f"greater than low ({self.low})")
        _check(
            not self.log or self.type == "int",
            f"{where}.log",
            self.log,
            "for int only (log_uniform is the log scale of a float)",
        )
        if self.type == "log_uniform" or self.log:
            _check(self.low > 0, f"{where}.low", self.low, "above 0 on a log scale")
        if self.step is not None:
            ok = isinstance(self.step, int | float) and not isinstance(self.step, bool)
            ok = ok and 0 < self.step <= self.high - self.low and self.type in ("int", "uniform")
            ok = ok and not self.log and (self.type != "int" or float(self.step).is_integer())
            _check(
                ok, f"{where}.step", self.step, "a positive step within the range (int, uniform)"
            )
        if self.type == "int":  # JSON and YAML may give 4.0: Optuna's int needs an int
            self.low, self.high = int(self.low), int(self.high)
            self.step = int(self.step) if self.step is not None else None

    def values(self) -> list[Any]:
        """The values whose validity stands for the whole range: its ends and its middle (an
        int field refuses the floats a float range samples), or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return [self.low, self.high, (self.low + self.high) // 2]
        return [self.low, self.high, (self.low + self.high) / 2]

    def holds(self, value: Any) -> bool:
        """Whether ``value`` (the recipe's own) is one this range samples: on its grid."""
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices or [])
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9


@dataclass
class SweepEval:
    """The short eval run that scores each trial (``sweep.objective: eval``): the trial's
    adapter answers ``limit`` questions of ``dataset`` in ``mode``, scored by ``metric``. Keep
    these questions apart from the ones the final comparison is made on."""

    dataset: str = ""  # an eval dataset (a path for the CLI, an uploaded file id for the API)
    metric: str = "token_f1"  # an answer metric: higher is better
    mode: str = "hybrid"  # hybrid (with retrieval) or ft (the question alone)
    limit: int | None = 50  # the first N questions; None: all of them
    k: int = 3  # passages in the prompt (hybrid)
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        ok = isinstance(self.dataset, str) and 0 < len(self.dataset) <= SWEEP_EVAL_DATASET_MAX_CHARS
        _check(ok, "sweep.eval.dataset", self.dataset, "an eval dataset to score trials on")
        _check(
            self.metric in SWEEP_EVAL_METRICS,
            "sweep.eval.metric",
            self.metric,
            f"one of {SWEEP_EVAL_METRICS}",
        )
        _check(self.mode in SWEEP_EVAL_MODES, "sweep.eval.mode", self.mode, "hybrid or ft")
        _check_bounds(self, SWEEP_EVAL_BOUNDS, "sweep.eval.")


@dataclass
class SweepSpec:
    """A hyperparameter search over the recipe (``ragtune tune --sweep``): ``space`` maps a
    recipe key (``hyperparameters.learning_rate``, ``datasets.0.synthetic.p_gold``,
    ``retriever.negatives``) to how it is sampled. Optuna's TPE sampler proposes each trial;
    the pruner stops a trial whose validation loss lags the others'."""

    space: dict[str, SweepParam] = field(default_factory=dict)
    trials: int = 8  # trials in all, the baseline included (pruned and failed ones count)
    objective: str = "val_loss"  # val_loss | recall@10 (retriever) | reward_accuracy (kto, dpo)
    pruner: str = "median"  # median | hyperband | none (only val_loss is seen as a trial runs)
    timeout_s: float | None = None  # no trial starts once the sweep has run this long
    seed: int = 42  # the sampler's
    baseline: bool = True  # the first trial trains the recipe's own values
    eval: SweepEval | None = None  # objective eval: the eval run that scores each trial

    def __post_init__(self) -> None:
        if isinstance(self.eval, dict):
            self.eval = SweepEval(**self.eval)
        _check(
            isinstance(self.space, dict) and 0 < len(self.space) <= SWEEP_PARAMS_MAX,
            "sweep.space",
            self.space,
            f"a mapping of 1 to {SWEEP_PARAMS_MAX} recipe keys to their ranges",
        )
        space = {}
        for path, param in self.space.items():
            if isinstance(param, dict):
                try:
                    param = SweepParam(**param)
                except TypeError as exc:
                    raise ValueError(
                        f"sweep.space.{path}: {exc}".replace("__init__() ", "")
                    ) from None
            _check(isinstance(param, SweepParam), f"sweep.space.{path}", param, "a mapping")
            param.check(path)
            space[path] = param
        self.space = space
        _check_bounds(self, SWEEP_BOUNDS, "sweep.")
        _check(
            self.objective in SWEEP_OBJECTIVES,
            "sweep.objective",
            self.objective,
            f"one of {tuple(SWEEP_OBJECTIVES)}",
        )
        _check(self.pruner in SWEEP_PRUNERS, "sweep.pruner", self.pruner, f"one of {SWEEP_PRUNERS}")
        _check(isinstance(self.baseline, bool), "sweep.baseline", self.baseline, "true or false")
        _check(
            (self.eval is not None) == (self.objective == "eval"),
            "sweep.eval",
            self.eval,
            "set for objective eval (and only then): {dataset, metric, mode, limit}",
        )

    @property
    def direction(self) -> str:
        return SWEEP_OBJECTIVES[self.objective]


# Keys that change which examples a trial trains and is scored on (its own held-out split).
SWEEP_DATA_KEYS = (
    "datasets.",
    "min_examples",
    "hyperparameters.val_fraction",
    "hyperparameters.test_fraction",
    "hyperparameters.seed",
    "hyperparameters.max_length",
    "preference.held_out",
    "preference.max_pairs_per_question",
)


def _splits_data(path: str) -> bool:
    return any(path == k or (k.endswith(".") and path.startswith(k)) for k in SWEEP_DATA_KEYS)


def get_path(data: Any, path: str) -> Any:
    """The value at dotted ``path`` of plain recipe data (list items by index); KeyError when
    it is not there."""
    node = data
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(path)
    return node


def set_path(data: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = get_path(data, ".".join(parents)) if parents else data
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def with_values(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """``recipe`` as one trial trains it: the sweep's ``values`` set, the sweep block gone;
    ``ValueError`` naming the key when a value is not one the recipe takes."""
    data = recipe.to_dict()
    data["sweep"] = None
    for path, value in values.items():
        set_path(data, path, value)
    try:
        return recipe_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"sweep.space: {exc}") from None


@dataclass
class Recipe:
    name: str  # the adapter's registry name
    method: str = "lora"
    component: str = "generator"  # generator | retriever (the embedder)
    base_model: str | None = None  # preset, hub id or folder; None: the service's model
    datasets: list[DataSpec] = field(default_factory=list)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    parent: str | None = None  # an adapter to continue from (sequential fine-tuning)
    probe: bool = True  # score the forgetting probe before and after training
    min_examples: int = 8  # fewer valid examples than this refuses the job
    retriever: RetrieverTuning = field(default_factory=RetrieverTuning)  # component retriever
    preference: PreferenceTuning = field(default_factory=PreferenceTuning)  # kto and dpo
    sweep: SweepSpec | None = None  # a hyperparameter search (used by ``tune --sweep`` only)

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DataSpec) else DataSpec(**d) for d in self.datasets]
        if isinstance(self.preference, dict):
            self.preference = PreferenceTuning(**self.preference)
        if isinstance(self.hyperparameters, dict):
            self.hyperparameters = Hyperparameters(**self.hyperparameters)
        if isinstance(self.retriever, dict):
            self.retriever = RetrieverTuning(**self.retriever)
        _check(self.component in COMPONENTS, "component", self.component, f"one of {COMPONENTS}")
        if self.component == "retriever":
            self._check_retriever()
        else:
            _check(self.method in METHODS, "method", self.method, f"one of {METHODS}")
            for spec in self.datasets:
                _check(
                    spec.feedback is None or self.method in PREFERENCE_METHODS,
                    "dataset.feedback",
                    "feedback",
                    f"ratings train the preference methods {PREFERENCE_METHODS}, not {self.method}",
                )
                if spec.synthetic is not None:
                    _check(
                        spec.synthetic.kind != "pairs",
                        "synthetic.kind",
                        "pairs",
                        "qa, raft or closed_book for the generator (pairs train the retriever)",
                    )
        hp = self.hyperparameters
        if hp.learning_rate is None:
            hp.learning_rate = _default_lr(self.component, self.method)
        if hp.batch_size is None:
            hp.batch_size = 32 if self.component == "retriever" else 4
        _check(bool(self.datasets), "datasets", self.datasets, "needs at least one dataset")
        _check(
            isinstance(self.name, str) and valid_name(self.name),
            "name",
            self.name,
            NAME_RULE,
        )
        if isinstance(self.sweep, dict):
            self.sweep = SweepSpec(**self.sweep)
        if self.sweep is not None:
            self._check_sweep(self.sweep)
        generator = self.component == "generator"
        if generator and self.method in PREFERENCE_METHODS:
            self._check_preference()
        elif generator and self.parent is not None and self.method not in ("lora", "dora", "ia3"):
            raise ValueError(
                f"parent: continuing an adapter needs lora, dora or ia3, not {self.method}"
            )
        else:
            _check(
                self.parent != PROMOTED,
                "parent",
                self.parent,
                f"{PROMOTED!r} is for the preference methods {PREFERENCE_METHODS}",
            )

    def _check_sweep(self, sweep: SweepSpec) -> None:
        """Every searched key is one of this recipe's own values (not what it is or trains on);
        both ends of a range (every choice) make a valid recipe; the objective is one this
        component's trainer reports, and the baseline's values lie in the space."""
        self.sweep = None  # the recipe without its sweep block, once (a trial has none)
        try:
            data = dataclasses.asdict(self)
        finally:
            self.sweep = sweep
        for path, param in sweep.space.items():
            where = f"sweep.space.{path}"
            _check(
                path.split(".")[0] not in SWEEP_FIXED and path not in SWEEP_FIXED,
                where,
                path,
                "a trial keeps the recipe's " + ", ".join(SWEEP_FIXED),
            )
            try:
                own = get_path(data, path)
            except KeyError:
                raise ValueError(f"{where}: not a key of this recipe") from None
            _check(
                own is None or isinstance(own, str | int | float | bool),
                where,
                path,
                "a single value of the recipe (not a section or a list)",
            )
            for value in param.values():
                trial = copy.deepcopy(data)
                set_path(trial, path, value)
                try:
                    recipe_from_dict(trial)
                except ValueError as exc:
                    raise ValueError(
                        f"{where}: {value!r} is not a value the recipe takes ({exc})"
                    ) from None
            if sweep.baseline:
                _check(
                    param.holds(own),
                    where,
                    own,
                    "the recipe's own value within the range, on its step (the baseline trial "
                    "trains it); widen the range or set sweep.baseline false",
                )
        retriever = self.component == "retriever"
        if sweep.objective == "eval":
            _check(
                not retriever,
                "sweep.objective",
                "eval",
                "recall@10 for a retriever recipe (eval scores a generator adapter's answers)",
            )
            return
        wants = (
            "recall@10"
            if retriever
            else "reward_accuracy"
            if self.method in PREFERENCE_METHODS
            else None
        )
        _check(
            sweep.objective in ("val_loss", wants)
            and not (retriever and sweep.objective == "val_loss"),
            "sweep.objective",
            sweep.objective,
            f"{wants} for a retriever recipe"
            if retriever
            else f"val_loss{' or ' + wants if wants else ''} or eval for this recipe",
        )
        for path in sweep.space:
            _check(
                not _splits_data(path),
                f"sweep.space.{path}",
                path,
                f"not searched on {sweep.objective}: it changes the data the trials' held-out "
                "split is cut from, so their values would not compare; score trials with "
                "objective eval (sweep.eval) instead",
            )
        if sweep.objective == "reward_accuracy":
            _check(
                self.preference.held_out > 0,
                "preference.held_out",
                self.preference.held_out,
                "above 0 for a sweep on reward_accuracy (it is measured on the held-out rows)",
            )
        if sweep.objective in ("val_loss", "recall@10"):
            _check(
                self.hyperparameters.val_fraction > 0,
                "hyperparameters.val_fraction",
                self.hyperparameters.val_fraction,
                f"above 0 for a sweep on {sweep.objective} (it is measured on the held-out split)",
            )

    def _check_preference(self) -> None:
        """kto/dpo read rated answers or preference files, never SFT data made from the index;
        their held-out share is ``preference.held_out`` (not ``test_fraction``)."""
        hp = self.hyperparameters
        _check(
            hp.val_fraction + self.preference.held_out < 1,
            "preference.held_out",
            self.preference.held_out,
            "must leave rows to train on (hyperparameters.val_fraction + held_out < 1)",
        )
        _check(
            not hp.test_fraction,
            "hyperparameters.test_fraction",
            hp.test_fraction,
            f"0 for {self.method}: its held-out share is preference.held_out",
        )
        _check(
            hp.early_stopping_patience is None,
            "hyperparameters.early_stopping_patience",
            hp.early_stopping_patience,
            f"null for {self.method} (TRL's trainer runs its planned updates)",
        )
        _check(
            self.method != "kto" or (hp.batch_size or 0) >= 2,
            "hyperparameters.batch_size",
            hp.batch_size,
            "at least 2 for kto (its KL estimate pairs completions within a batch)",
        )
        for spec in self.datasets:
            _check(
                spec.synthetic is None,
                "dataset.synthetic",
                "synthetic",
                f"{self.method} trains on feedback or a preference file, not synthetic data",
            )
            _check(
                spec.format == "auto",
                "dataset.format",
                spec.format,
                f"'auto' for {self.method} (a preference file's rows say their kind)",
            )
            _check(
                spec.template == "chat",
                "dataset.template",
                spec.template,
                f"'chat' for {self.method} (preference rows carry their prompts)",
            )

    def _check_retriever(self) -> None:
        _check(
            self.method in RETRIEVER_METHODS,
            "method",
            self.method,
            f"one of {RETRIEVER_METHODS} for the retriever",
        )
        for spec in self.datasets:
            if spec.synthetic is None:
                continue
            if spec.synthetic.kind == "raft":  # the default kind: for the retriever, pairs
                spec.synthetic.kind = "pairs"
            _check(
                spec.synthetic.kind == "pairs",
                "synthetic.kind",
                spec.synthetic.kind,
                "'pairs' for the retriever",
            )
            _check(
                spec.synthetic.generator == "extractive",
                "synthetic.generator",
                spec.synthetic.generator,
                "'extractive' for retriever pairs (sentences cut from each chunk)",
            )
        for spec in self.datasets:
            _check(
                spec.feedback is None,
                "dataset.feedback",
                "feedback",
                "ratings of answers train the generator (kto, dpo), not the retriever",
            )
        _check(
            self.parent is None or self.method == "full",
            "parent",
            self.parent,
            "a retriever continues from a parent with method full (its whole embedder is saved)",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_lr(component: str, method: str) -> float:
    if component == "retriever":
        return 2e-5 if method == "full" else 1e-4
    return 2e-4


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A ``Recipe`` from plain data, with unknown keys refused by name."""
    try:
        return Recipe(**data)
    except TypeError as exc:  # an unknown or missing key, from a dataclass constructor
        raise ValueError(str(exc).replace("__init__() ", "")) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe and apply ``a.b=value`` overrides (values parsed as YAML). A relative
    dataset path is taken from the working directory, else from the recipe's folder."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping, got {type(data).__name__}")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key.path=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    for spec in data.get("datasets") or []:  # a relative path may be relative to the recipe
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            given = Path(spec["path"])
            beside = Path(path).parent / given
            if not given.is_absolute() and not given.exists() and beside.exists():
                spec["path"] = str(beside)
    return recipe_from_dict(data)
