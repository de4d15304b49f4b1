"""``ragtune eval --fix``: tune the component the diagnosis named, evaluate again on the same
questions, and keep the result only when the gain is significant.

- retriever weak: the embedder is tuned on pseudo-queries mined from the evaluated corpus
  (``configs/retriever-pairs.yaml``), the questions are asked again through a fresh index built
  with it, and the gate is the paired share of questions with a gold passage in the prompt. A
  passing embedder is reported with the command that switches the live index to it (the live
  index may hold more than this corpus, so it is never re-embedded behind the user's back).
- generator weak: a RAFT adapter is tuned on questions synthesised from the same documents
  (``configs/raft-hybrid.yaml``) and answers in hybrid mode; the gate is its token F1 against
  the better of the run's rag and hybrid answers. The registry records the gate either way,
  and a passing adapter is promoted (so ft and hybrid requests use it); a failing one cannot
  be promoted without force.
- both: the retriever first, then the generator over the new index.

When the component already runs with an adapter the recipe can go on training (the hybrid
LoRA/DoRA/IA3 adapter, a fully tuned embedder, on the same base model), the fix continues it as
its child, on examples drawn with a new seed; trained again from the base, the same recipe, data
and seed would only rebuild the same weights.

"Significant" means the paired bootstrap interval of the difference lies above zero. Writes
``fix.json`` into the run folder, and each re-evaluation into a sub-folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval import stats
from eval.config import MODES, EvalOptions, diagnosed_mode, retrieves
from eval.datasets.formats import load
from tuner.durable import atomic_write_text

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)
Run = Callable[[EvalOptions, Path, Any], dict[str, Any]]
RECIPES = {"retriever": "retriever-pairs.yaml", "generator": "raft-hybrid.yaml"}


def recipe_path(component: str, folder: Path | None = None) -> Path:
    """The shipped recipe: ``configs/`` under the working directory, else beside the package."""
    name = RECIPES[component]
    for base in [folder] if folder else [Path("configs"), Path(__file__).parents[1] / "configs"]:
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"recipe {name} not found (looked in ./configs and the checkout)")


def fix(
    options: EvalOptions,
    out: Path,
    settings: Settings,
    metrics: dict[str, Any],
    run: Run,
    recipes: dict[str, Path] | None = None,
    overrides: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Act on ``metrics["diagnosis"]``; return what was trained, measured and promoted."""
    diagnosis = metrics.get("diagnosis") or {}
    weak = diagnosis.get("weak")
    if weak in (None, "none"):
        return _done(out, _nothing_to_fix(weak))
    recipes = recipes or {c: recipe_path(c) for c in RECIPES}
    overrides = overrides or {}
    before = read_rows(out)
    steps = []
    current = options
    if weak in ("retriever", "both"):
        step, current = _retriever(current, out, settings, run, before, recipes, overrides)
        steps.append(step)
    if weak in ("generator", "both"):
        baseline = read_rows(out / "fix-retriever") if steps and steps[0]["passed"] else before
        steps.append(_generator(current, out, settings, run, baseline, recipes, overrides))
    message = "; ".join(s["message"] for s in steps)
    return _done(out, {"weak": weak, "steps": steps, "message": message})


def _nothing_to_fix(weak: str | None) -> dict[str, Any]:
    why = (
        "no wrong answers"
        if weak == "none"
        else "no diagnosis (no rag/hybrid mode or no gold answers)"
    )
    return {"weak": weak, "steps": [], "message": f"nothing to fix: {why}"}


def _done(out: Path, outcome: dict[str, Any]) -> dict[str, Any]:
    atomic_write_text(out / "fix.json", json.dumps(outcome, indent=2))
    return outcome


def _retriever(
    options: EvalOptions,
    out: Path,
    settings: Settings,
    run: Run,
    before: list[dict],
    recipes: dict[str, Path],
    overrides: dict[str, list[str]],
) -> tuple[dict[str, Any], EvalOptions]:
    if options.live:
        message = (
            "retriever fix skipped: a live run has no corpus of its own to re-index; "
            f"run 'ragtune tune --recipe {recipes['retriever']}'"
        )
        return {"component": "retriever", "passed": False, "message": message}, options
    record = train_on(options, settings, recipes["retriever"], overrides.get("retriever", []))
    mode = _diagnosed_mode(options)
    continued = f" (continued from {record.parent})" if record.parent else ""
    again = replace(options, embedder_adapter=record.id, modes=(mode,), probes=False)
    run(again, out / "fix-retriever", settings)
    after = read_rows(out / "fix-retriever")
    result = gate(before, after, mode, mode, "gold_in_prompt", options)
    passed = result is not None and result["better"] == "b"
    message = f"embedder {record.id}{continued}: gold passage in the prompt {_change(result)}; " + (
        f"significant: switch the live index with 'ragtune reindex --adapter {record.id}'"
        if passed
        else "not significant: the index keeps its embedder"
    )
    step = {
        "component": "retriever",
        "adapter": record.id,
        "parent": record.parent,
        "gate": result,
        "passed": passed,
        "message": message,
    }
    return step, (again if passed else options)


def _generator(
    options: EvalOptions,
    out: Path,
    settings: Settings,
    run: Run,
    before: list[dict],
    recipes: dict[str, Path],
    overrides: dict[str, list[str]],
) -> dict[str, Any]:
    from service.loading import registry_from_settings

    record = train_on(options, settings, recipes["generator"], overrides.get("generator", []))
    again = replace(options, hybrid_adapter=record.id, modes=("hybrid",), probes=False)
    run(again, out / "fix-generator", settings)
    after = read_rows(out / "fix-generator")
    baseline = _best_mode(before)
    result = gate(before, after, baseline, "hybrid", "token_f1", options)
    passed = result is not None and result["better"] == "b"
    registry = registry_from_settings(settings)
    registry.set_eval_gate(
        record.id, passed, {"metric": "token_f1", "against": baseline, **(result or {})}
    )
    if passed:
        registry.promote(record.id)
    continued = f" (continued from {record.parent})" if record.parent else ""
    message = f"adapter {record.id}{continued}: token F1 vs {baseline} {_change(result)}; " + (
        "significant: promoted" if passed else "not significant: not promoted"
    )
    return {
        "component": "generator",
        "adapter": record.id,
        "parent": record.parent,
        "against": baseline,
        "gate": result,
        "passed": passed,
        "promoted": passed,
        "message": message,
    }


def _change(result: dict[str, Any] | None) -> str:
    if result is None:
        return "could not be compared"
    return f"{result['mean_diff']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"


def _diagnosed_mode(options: EvalOptions) -> str:
    mode = diagnosed_mode(options.modes)
    assert mode is not None, "a run with a diagnosis has a retrieving mode"
    return mode


def _best_mode(rows: list[dict]) -> str:
    """The retrieval mode with the higher mean token F1 in a run."""
    means = {}
    for mode in filter(retrieves, MODES):
        scores = [r["metrics"].get("token_f1") for r in rows if r["mode"] == mode]
        scores = [s for s in scores if s is not None]
        if scores:
            means[mode] = sum(scores) / len(scores)
    return max(means, key=lambda m: means[m])


def read_rows(folder: Path) -> list[dict]:
    text = (folder / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def gate(
    before: list[dict],
    after: list[dict],
    mode_before: str,
    mode_after: str,
    metric: str,
    options: EvalOptions,
) -> dict[str, Any] | None:
    """Paired difference (after - before) of ``metric`` over the questions both runs asked."""
    a = {r["query_id"]: _value(r, metric) for r in before if r["mode"] == mode_before}
    b = {r["query_id"]: _value(r, metric) for r in after if r["mode"] == mode_after}
    shared = [q for q in a if q in b]
    if not shared:
        return None
    idx = stats.resample_indices(len(shared), options.resamples, options.seed)
    return stats.paired([a[q] for q in shared], [b[q] for q in shared], idx)


def _value(row: dict, metric: str) -> float | None:
    value = row.get(metric) if metric in row else row["metrics"].get(metric)
    return None if value is None else float(value)


def train_on(options: EvalOptions, settings: Settings, recipe: Path, overrides: list[str]) -> Any:
    """Train ``recipe`` on data mined from the evaluated documents; return its registry record.
    The run goes through the service's one tuning entry point, from scratch, never activated:
    the gate decides what to keep."""
    from service import tuning
    from tuner.config import load_recipe

    plan = tuning.choose_base(load_recipe(recipe, overrides), settings)
    parent = continuation(options, settings, plan)
    if parent is not None:
        _continue(plan, parent, settings)
    if plan.component == "retriever":
        plan.retriever.activate = False
    log.info("fix: training %s (%s)", plan.name, plan.component)
    return tuning.run(
        plan,
        settings,
        job_name=f"eval-fix-{plan.name}",
        open_index=lambda: _documents(options, settings),
        fresh=True,
    )


CONTINUABLE = {"generator": ("lora", "dora", "ia3"), "retriever": ("full",)}


def continuation(options: EvalOptions, settings: Settings, plan: Any) -> Any | None:
    """The registry record of the adapter the component ran with in this evaluation, when
    ``plan`` can go on training it (see the module's docstring); else None."""
    from service.loading import registry_from_settings
    from tuner.registry import RecordNotFound, RegistryError

    current = _current_adapter(options, settings, plan.component)
    if current is None:
        return None
    try:
        record = registry_from_settings(settings).get(current)
    except (RecordNotFound, RegistryError):
        return None
    if (
        record.component != plan.component
        or record.method not in CONTINUABLE[plan.component]
        or record.base_model != plan.base_model
    ):
        log.info(
            "fix: %s (%s %s on %s) cannot be continued by %s; training from %s",
            record.id,
            record.component,
            record.method,
            record.base_model,
            plan.name,
            plan.base_model,
        )
        return None
    return record


def _current_adapter(options: EvalOptions, settings: Settings, component: str) -> str | None:
    if component == "retriever":
        if options.embedder_adapter:
            return options.embedder_adapter
        from service.loading import tuned_index_identity

        identity = tuned_index_identity(settings)  # what the live index switched to
        return str(identity["adapter"]) if identity else None
    from eval.harness import EvalError, resolve_adapters

    try:
        return resolve_adapters(replace(options, modes=("hybrid",)), settings).get("hybrid")
    except EvalError:  # no adapter named or promoted: nothing to continue
        return None


def _continue(plan: Any, parent: Any, settings: Settings) -> None:
    """Make ``plan`` a child of ``parent``: its method, and seeds moved on by the depth of the
    lineage, so each round draws other synthetic examples and another data order."""
    from service.loading import registry_from_settings

    depth = len(registry_from_settings(settings).lineage(parent.id))
    plan.parent, plan.method = parent.id, parent.method
    plan.hyperparameters.seed += depth
    for spec in plan.datasets:
        if spec.synthetic is not None:
            spec.synthetic.seed += depth
    log.info("fix: %s continues %s (seed +%d)", plan.name, parent.id, depth)


@contextmanager
def _documents(options: EvalOptions, settings: Settings) -> Iterator[Any]:
    """The evaluated documents: a fresh index of the dataset's corpus, or the live index."""
    from eval.index_cache import fresh_index

    if options.live:
        from service.loading import open_retriever

        live = open_retriever(settings)
        try:
            yield live
        finally:
            live.close()
        return
    assert options.dataset is not None
    with fresh_index(load(options.dataset), settings, options.embedder_adapter, {}) as index:
        yield index
