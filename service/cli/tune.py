"""``ragtune tune``: one tuning run from a recipe, in this process, through the same entry point
as the jobs API and ``ragtune eval --fix`` (``service.tuning``), with a progress bar; a
retriever run then re-embeds the index with its result (unless ``retriever.activate`` is false).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from service.cli.common import load_settings, main, open_index, reembed
from service.runtime import one_line, quiet_transformers

if TYPE_CHECKING:
    from service.settings import Settings


class _Bar:
    """Training progress as a tqdm bar: update, loss, validation loss."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc="tune", unit="update")
        self.switched = 0  # chunks the activation re-embedded

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.bar.total = total
        self.bar.n = step
        post = {"loss": f"{loss:.3f}"}
        if val_loss is not None:
            post["val"] = f"{val_loss:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        self.bar.close()


@main.command()
@click.option(
    "--recipe",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A YAML recipe (see configs/).",
)
@click.option("--set", "overrides", multiple=True, help="Override a recipe key: a.b=value.")
@click.option("--fresh", is_flag=True, help="Ignore checkpoints of an earlier interrupted run.")
@click.option(
    "--sweep",
    "sweeping",
    is_flag=True,
    help="Search the recipe's sweep: block with Optuna, one tuning run per trial; run again "
    "to resume a killed sweep (--fresh starts it over).",
)
def tune(recipe: Path, overrides: tuple[str, ...], fresh: bool, sweeping: bool) -> None:
    """Fine-tune the generator or the retriever from a recipe; the result lands in the registry
    (a retriever's embedder then re-embeds the index, unless retriever.activate is false).
    With --sweep, every finished trial lands there and the best is named, not promoted."""
    from contextlib import closing

    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service import tuning
    from tuner.config import load_recipe
    from tuner.data import DataError
    from tuner.methods import MethodUnavailable
    from tuner.registry import RecordNotFound, RegistryError

    settings = load_settings()
    quiet_transformers()
    try:
        plan = load_recipe(recipe, list(overrides))
    except ValueError as exc:
        raise click.ClickException(f"{recipe}: {one_line(exc)}") from None
    if sweeping:
        _sweep(plan, recipe, settings, fresh)
        return
    job_name = f"cli-{plan.name}"
    resumes = plan.component == "generator" and not fresh
    if resumes and tuning.prepared_before(settings.layout.job(job_name)):
        click.echo(f"resuming from {settings.layout.job(job_name)}")
    bar = _Bar()
    try:
        record = tuning.run(
            plan,
            settings,
            job_name=job_name,
            open_index=lambda: closing(open_index(settings)),
            hooks=bar,
            fresh=fresh,
            on_prepared=lambda p: _said(bar, _data_line(plan.component, p)),
            activate=lambda r: _activate(r, settings, bar),
        )
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    except (
        ValueError,
        MethodUnavailable,
        RetrieverError,
        ModelNotAvailable,
        RecordNotFound,
        RegistryError,
    ) as exc:
        raise click.ClickException(one_line(exc)) from None
    finally:
        bar.close()
    if plan.component == "retriever":
        click.echo(_embedder_summary(record))
        if not plan.retriever.activate:
            click.echo(
                "not re-embedding (retriever.activate false); to switch: "
                f"ragtune reindex --adapter {record.id}"
            )
        else:
            click.echo(f"index re-embedded with {record.id}: {bar.switched} chunks switched")
    else:
        click.echo(_summary(record))


def _sweep(plan: Any, path: Path, settings: Settings, fresh: bool) -> None:
    """``tune --sweep``: each trial one run in this process, as a single ``tune`` runs."""
    import shutil
    from contextlib import closing

    from service import tuning
    from tuner.hooks import Cancelled
    from tuner.sweep import Sweep, SweepBusy, TrialInfo

    if plan.sweep is None:
        raise click.ClickException(f"{path}: --sweep needs a sweep: block (sweep.space, trials)")
    try:
        tuning.choose_base(plan, settings)
        sweep = Sweep.open(settings.layout.sweeps, plan, fresh=fresh)
    except (ValueError, SweepBusy) as exc:
        raise click.ClickException(one_line(exc)) from None
    if fresh:  # the trials' folders too: a new trial N must not resume an old one's checkpoints
        for old in settings.layout.jobs.glob(f"cli-{sweep.id}-t*"):
            shutil.rmtree(old, ignore_errors=True)
    spec = plan.sweep
    click.echo(
        f"sweep {sweep.id}: {spec.trials} trials, {spec.objective} ({spec.direction}), "
        f"pruner {spec.pruner}; folder {sweep.folder}"
    )
    bar = _Bar()

    def run_trial(recipe: Any, info: TrialInfo, hooks: Any) -> Any:
        job_name = info.resume or f"cli-{sweep.id}-t{info.sweep['trial']}"
        info.started(job_name)
        if tuning.prepared_before(settings.layout.job(job_name)):
            _said(
                bar, f"trial {info.sweep['trial']}: resuming from {settings.layout.job(job_name)}"
            )
        bar.bar.reset()
        bar.bar.set_description(f"trial {info.sweep['trial']}")
        try:
            return tuning.run(
                recipe,
                settings,
                job_name=job_name,
                open_index=lambda: closing(open_index(settings)),
                hooks=hooks,
                fresh=info.resume is None,  # only a trial this sweep ran before resumes
                sweep=info.sweep,
            )
        except Cancelled:  # pruned (or the sweep stopped): no adapter, no checkpoints kept
            shutil.rmtree(settings.layout.job(job_name), ignore_errors=True)
            raise

    def said(summary: dict[str, Any]) -> None:
        t = summary["trials"][-1] if summary["trials"] else None
        if t is not None:
            value = f"{t['value']:.4f}" if t["value"] is not None else t.get("error") or "-"
            _said(bar, f"trial {t['number']} {t['state']}: {value} {t['params']}")

    score = _eval_score(sweep, bar) if spec.eval is not None else None
    try:
        summary = sweep.run(run_trial, hooks=bar, on_trial=said, score=score)
    except SweepBusy as exc:
        raise click.ClickException(one_line(exc)) from None
    except KeyboardInterrupt:
        bar.close()
        raise click.ClickException(
            f"sweep {sweep.id} interrupted; run the same command again to resume it"
        ) from None
    except RuntimeError as exc:
        raise click.ClickException(f"sweep {sweep.id}: {one_line(exc)}") from None
    finally:
        bar.close()
    best, base = summary["best"], summary["baseline"]
    if best is None:
        click.echo(f"sweep {sweep.id}: no trial finished")
    else:
        click.echo(
            f"best: trial {best['number']}, {spec.objective} {best['value']:.4f}, adapter "
            f"{best['adapter']}, {best['params']}"
        )
        if base is not None and base.get("value") is not None:
            click.echo(f"recipe's own values (trial {base['number']}): {base['value']:.4f}")
        click.echo(
            f"named, not promoted; gate it: ragtune eval --dataset D --gate {best['adapter']}"
        )
    if summary.get("report"):
        click.echo(f"report: {sweep.folder / summary['report']['html']}")


def _eval_score(sweep: Any, bar: _Bar) -> Any:
    """A trial's objective ``eval``: ``ragtune eval`` of its adapter on ``sweep.eval``'s
    questions, in a child process (the service never imports ``eval``), its run kept in the
    sweep's folder under ``evals/trial-N``."""
    import json
    import os
    import subprocess
    import sys

    spec = sweep.spec.eval

    def score(record: Any) -> float:
        out = sweep.folder / "evals" / f"trial-{record.sweep['trial']}"
        cmd = [
            sys.executable,
            "-m",
            "eval",
            "eval",
            "--dataset",
            spec.dataset,
            "--modes",
            spec.mode,
            f"--{spec.mode}-adapter",
            record.id,
            "--k",
            str(spec.k),
            "--max-new-tokens",
            str(spec.max_new_tokens),
            "--resamples",
            "1000",
            "--no-probes",
            "--out",
            str(out),
            *(["--limit", str(spec.limit)] if spec.limit else []),
        ]
        _said(bar, f"trial {record.sweep['trial']}: scoring {record.id} on {spec.dataset}")
        env = {**os.environ, "RAGTUNE_PROG": "ragtune"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"ragtune eval exited {proc.returncode}")
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        return float(metrics["metrics"][spec.mode][spec.metric]["mean"])

    return score


def _data_line(component: str, prepared: Any) -> str:
    if component == "retriever":
        return f"pairs: {prepared.train} train, {prepared.val} held out"
    return f"data: {prepared.train} train, {prepared.val} validation, {prepared.test} test"


def _said(bar: _Bar, line: str) -> None:
    bar.bar.clear()
    click.echo(line)


def _activate(record: Any, settings: Settings, bar: _Bar) -> None:
    """A retriever run's embedder replaces the index's: re-embed, then switch."""
    from service.loading import tuned_embedder

    retriever = open_index(settings)
    try:
        result = reembed(retriever, tuned_embedder(record.id, settings))
    finally:
        retriever.close()
    bar.switched = int(result.get("chunks", 0))


def _embedder_summary(record: Any) -> str:
    m = record.metrics
    return (
        f"embedder {record.id} ({record.method}) saved: held-out recall@10 "
        f"{_num(m.get('recall@10_before'))} -> {_num(m.get('recall@10_after'))}, "
        f"{m.get('updates')} updates in {m.get('seconds')} s"
    )


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _summary(record: Any) -> str:
    m = record.metrics
    lines = [f"adapter {record.id} ({record.method}) saved"]
    if m.get("first_loss") is not None:
        lines.append(
            f"  loss {m['first_loss']:.3f} -> {m['train_loss']:.3f} in {m['updates']} updates"
        )
    if m.get("best_val_loss") is not None:
        lines.append(f"  best validation loss {m['best_val_loss']:.3f}")
    reward = m.get("reward")
    if isinstance(reward, dict) and reward.get("rows"):
        lines.append(
            f"  held-out reward accuracy {reward['accuracy']:.3f} on {reward['rows']} rows; "
            f"gate it: ragtune eval --dataset D --gate {record.id}"
        )
    probe = m.get("probe")
    if probe:
        lines.append(
            f"  forgetting probe: nll {probe['before']['probe_nll']:.3f} -> "
            f"{probe['after']['probe_nll']:.3f}, accuracy {probe['before']['probe_accuracy']:.2f}"
            f" -> {probe['after']['probe_accuracy']:.2f}"
            + ("  (forgetting!)" if probe.get("forgetting") else "")
        )
    return "\n".join(lines)
