"""Command line of the eval package: datasets (``data``) and evaluation runs (``eval``).

The service's ``ragtune`` command forwards ``data`` and ``eval`` here in a child process.
Errors end the process with one line and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eval.config import MODES, EvalOptions

if TYPE_CHECKING:
    from service.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ragtune datasets and evaluations."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "sentence_transformers", "bm25s", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.group()
def data() -> None:
    """Obtain demo and evaluation data."""


@data.command("debian-faq")
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write (BEIR files plus documents/).",
)
@click.option(
    "--deb-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Use .deb files already in this folder.",
)
@click.option("--mirror", help="Debian mirror URL for the HTTP fallback (default: apt's sources).")
@click.option("--no-apt", is_flag=True, help="Do not try apt-get download.")
def debian_faq_cmd(
    lang: str, out: Path, deb_dir: Path | None, mirror: str | None, no_apt: bool
) -> None:
    """The Debian FAQ (questions, answers) with the Debian Reference as distractors."""
    from eval.datasets.deb import DebError
    from eval.datasets.debian import debian_faq

    with tempfile.TemporaryDirectory(prefix="ragtune-deb-") as work:
        try:
            manifest = debian_faq(
                lang, out, work=Path(work), deb_dir=deb_dir, mirror=mirror, use_apt=not no_apt
            )
        except (DebError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    checks = manifest["checks"]
    click.echo(
        f"wrote {out}: {checks['faq_pairs']} questions, {checks['faq_pairs']} answers, "
        f"{checks['reference_sections']} reference sections; "
        f"questions found in indexed text: {checks['questions_in_indexed_text']}"
    )
    click.echo(json.dumps(manifest["packages"]))


@main.command("eval")
@click.option(
    "--dataset",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="BEIR folder, SQuAD-style JSONL, or (with --live) a question/answer JSONL.",
)
@click.option(
    "--modes",
    default="base,rag,ft,hybrid",
    show_default=True,
    help=f"Comma-separated, from {', '.join(MODES)}.",
)
@click.option("--live", is_flag=True, help="Ask the questions against the live index.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder to write (default: DATA_DIR/evals/<run id>).",
)
@click.option("--k", default=3, show_default=True, help="Passages in the prompt.")
@click.option("--depth", default=20, show_default=True, help="Passages retrieved for recall@k.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--limit", type=int, help="Only the first N questions.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap and probe seed.")
@click.option("--resamples", default=10_000, show_default=True, help="Bootstrap resamples.")
@click.option("--ft-adapter", help="Adapter for ft mode (default: the promoted one).")
@click.option("--hybrid-adapter", help="Adapter for hybrid mode (default: the ft adapter).")
@click.option("--embedder-adapter", help="Fine-tuned embedder for the fresh index.")
@click.option("--batch", default=16, show_default=True, help="Answers generated together.")
@click.option("--no-probes", is_flag=True, help="Skip the forgetting and injection probes.")
@click.option(
    "--injection-n", default=30, show_default=True, help="Questions in the injection probe."
)
@click.option(
    "--correct-f1",
    default=0.5,
    show_default=True,
    help="Token F1 at which an answer counts as right (for the diagnosis).",
)
@click.option("--judge", help="Your LLM judge, module:function (off by default).")
@click.option(
    "--shots",
    default=3,
    show_default=True,
    help="Demonstrations (question/answer turns) before the question in icl and rag-icl.",
)
@click.option(
    "--shots-from",
    default="auto",
    show_default=True,
    help="Demonstrations from the dataset's training split (train), from questions "
    "synthesised from the documents (synth), or train when there is one (auto).",
)
@click.option(
    "--shot-choice",
    default="similar",
    show_default=True,
    help="Each question's demonstrations: the most similar by the run's embedder (similar) "
    "or a seeded sample (random).",
)
@click.option(
    "--fix", is_flag=True, help="Tune the weak component, re-evaluate, promote if better."
)
@click.option(
    "--gate",
    "gate_adapter",
    metavar="ADAPTER",
    help="Gate a kto/dpo adapter: against its parent on these questions, with its held-out "
    "reward accuracy; the verdict goes on its registry record.",
)
@click.option("--promote", is_flag=True, help="With --gate: promote the adapter if it passes.")
@click.option(
    "--fix-set",
    multiple=True,
    metavar="COMPONENT:KEY=VALUE",
    help="Override the --fix recipe of generator or retriever, e.g. "
    "generator:hyperparameters.max_steps=120 (repeatable).",
)
def eval_cmd(**kw: Any) -> None:
    """Compare base, rag, ft and hybrid (and the in-context icl, rag-icl) on the same
    questions; write a report folder."""
    from eval.datasets.formats import DatasetError
    from eval.harness import EvalError
    from service.runtime import ConfigError, quiet_transformers, read_settings

    try:
        settings = read_settings()  # the same set-up as every command
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    quiet_transformers()
    try:
        options = _options(kw)
        overrides = fix_overrides(kw["fix_set"]) if kw["fix"] else {}
    except ValueError as exc:
        raise click.ClickException(as_option(str(exc))) from None
    if kw["fix_set"] and not kw["fix"]:
        raise click.ClickException("--fix-set needs --fix")
    if kw["promote"] and not kw["gate_adapter"]:
        raise click.ClickException("--promote needs --gate ADAPTER")
    if kw["gate_adapter"] and kw["fix"]:
        raise click.ClickException("--gate and --fix are separate runs; pick one")
    out = kw["out"] or settings.layout.evals / time.strftime("eval-%Y%m%d-%H%M%S")
    if kw["gate_adapter"]:
        _gate(kw["gate_adapter"], options, out, settings, kw["promote"])
        return
    try:
        metrics = _run(options, out, settings)
        click.echo(summary(metrics, out))
        if kw["fix"]:
            from eval.fix import fix

            outcome = fix(options, out, settings, metrics, run=_run, overrides=overrides)
            click.echo(outcome["message"])
    except (EvalError, DatasetError, ValueError) as exc:
        raise click.ClickException(" ".join(str(exc).split())[:400]) from None


def _gate(adapter: str, options: EvalOptions, out: Path, settings: Settings, promote: bool) -> None:
    from eval.datasets.formats import DatasetError
    from eval.gate import run_gate
    from eval.harness import EvalError
    from tuner.registry import RegistryError

    try:
        result = run_gate(adapter, options, out, settings, _run, promote=promote)
    except (EvalError, DatasetError, ValueError, RegistryError) as exc:
        raise click.ClickException(" ".join(str(exc).split())[:400]) from None
    for metric, diff in result["metrics"].items():
        low, high = diff["ci_low"], diff["ci_high"]
        click.echo(f"  {metric:<18} {diff['mean_diff']:+.3f} [{low:+.3f}, {high:+.3f}]")
    click.echo(f"gate {adapter} vs {result['parent']}: {result['message']}")
    if result.get("promoted"):
        click.echo(f"promoted {adapter}")
    click.echo(f"report: {out / 'report.html'}; verdict: {out / 'gate.json'}")


def _options(kw: dict[str, Any]) -> EvalOptions:
    """The run's ``EvalOptions`` from the command's options (a bad value raises ValueError)."""
    return EvalOptions(
        dataset=kw["dataset"],
        live=kw["live"],
        modes=tuple(_modes(kw["modes"])),
        k=kw["k"],
        depth=kw["depth"],
        max_new_tokens=kw["max_new_tokens"],
        limit=kw["limit"],
        seed=kw["seed"],
        resamples=kw["resamples"],
        ft_adapter=kw["ft_adapter"],
        hybrid_adapter=kw["hybrid_adapter"],
        embedder_adapter=kw["embedder_adapter"],
        batch=kw["batch"],
        probes=not kw["no_probes"],
        injection_n=kw["injection_n"],
        correct_f1=kw["correct_f1"],
        judge=kw["judge"],
        shots=kw["shots"],
        shots_from=kw["shots_from"],
        shot_choice=kw["shot_choice"],
    )


def as_option(message: str) -> str:
    """An ``EvalOptions`` error as the command names it: ``shots_from: ...`` reads
    ``--shots-from: ...``."""
    name, sep, rest = message.partition(":")
    if sep and name in {f.name for f in dataclasses.fields(EvalOptions)}:
        return f"--{name.replace('_', '-')}:{rest}"
    return message


def fix_overrides(items: tuple[str, ...]) -> dict[str, list[str]]:
    """``COMPONENT:KEY=VALUE`` items grouped by component, each recipe loaded with its overrides
    now, so a bad key or value stops the command before the evaluation, not after it."""
    from eval.fix import RECIPES, recipe_path
    from tuner.config import load_recipe

    grouped: dict[str, list[str]] = {}
    for item in items:
        component, sep, override = item.partition(":")
        if not sep or component not in RECIPES or "=" not in override:
            raise ValueError(
                f"--fix-set {item!r}: expected generator:KEY=VALUE or retriever:KEY=VALUE"
            )
        grouped.setdefault(component, []).append(override)
    for component, overrides in grouped.items():
        path = recipe_path(component)
        try:
            load_recipe(path, overrides)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--fix-set: {path.name}: {' '.join(str(exc).split())}") from None
    return grouped


def _modes(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _run(options: Any, out: Path, settings: Settings) -> dict[str, Any]:
    """One evaluation with a progress bar; the live index is opened here when asked for."""
    from tqdm import tqdm

    from eval.harness import run_eval

    bar = tqdm(total=0, desc="eval", unit="answer")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    live = _open_live(settings) if options.live else None
    try:
        return run_eval(options, out, settings, progress=progress, retriever=live)
    finally:
        bar.close()
        if live is not None:
            live.close()


def _open_live(settings: Settings) -> Any:
    from retriever.errors import RetrieverError
    from service.loading import open_retriever

    try:
        return open_retriever(settings)
    except RetrieverError as exc:
        raise click.ClickException(
            f"cannot open the live index: {exc}; a running server holds it: stop it, or start "
            "the run with POST /v1/eval/runs"
        ) from None


def summary(metrics: dict[str, Any], out: Path) -> str:
    """The headline table: token F1 (or recall) per mode with its interval, then where to look."""
    lines = [f"{metrics['run']['questions']} questions, wall {metrics['run']['wall_s']:.0f} s"]
    for mode, by_metric in metrics["metrics"].items():
        cells = [
            f"{name} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            for name, v in by_metric.items()
            if name in ("token_f1", "rouge_l", "groundedness")
        ]
        perf = metrics["performance"][mode]
        cells.append(f"p50 {perf['latency_p50_s']:.2f} s")
        lines.append(f"  {mode:<7} " + "  ".join(cells))
    for metric, best in (metrics.get("best") or {}).items():
        if metric == "token_f1":
            over = ", ".join(best["significant_over"]) or "no other mode (not significant)"
            lines.append(f"best token F1: {best['mode']}, significantly better than {over}")
    diagnosis = metrics.get("diagnosis")
    if diagnosis:
        lines.append(f"weak component: {diagnosis['weak']} -> {diagnosis['action']}")
    prompting = metrics.get("prompting")
    if prompting and not (diagnosis and diagnosis.get("tuning_action")):
        lines.append(f"prompting vs fine-tuning: {prompting['message']}")
    lines.append(f"report: {out / 'report.html'}")
    return "\n".join(lines)
