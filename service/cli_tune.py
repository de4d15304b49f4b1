"""``ragtune tune`` and ``ragtune adapters``: fine-tune the generator from a recipe, and manage
the adapter registry. Thin: parse, call ``tuner`` functions, show progress, map errors to one
line. Registered on the main command group by ``service.cli``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from service.cli import _one_line, _open_index, _quiet_transformers, _settings, main


class _Bar:
    """Training progress as a tqdm bar: update, loss, validation loss."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc="tune", unit="update")

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
def tune(recipe: Path, overrides: tuple[str, ...], fresh: bool) -> None:
    """Fine-tune the generator or the retriever from a recipe; the result lands in the registry
    (a retriever's embedder then re-embeds the index, unless retriever.activate is false)."""
    from tuner.config import load_recipe
    from tuner.data import DataError
    from tuner.methods import MethodUnavailable
    from tuner.prepare import prepare
    from tuner.train import train

    settings = _settings()
    _quiet_transformers()
    try:
        plan = load_recipe(recipe, list(overrides))
    except ValueError as exc:
        raise click.ClickException(f"{recipe}: {_one_line(exc)}") from None
    if plan.component == "retriever":
        _tune_retriever(plan, settings, fresh)
        return
    if plan.base_model is None:
        plan.base_model = settings.generator
    job_dir = settings.layout.job(f"cli-{plan.name}")
    if fresh and job_dir.exists():
        import shutil

        shutil.rmtree(job_dir)
    try:
        _prepare_here(plan, job_dir, settings, prepare)
        bar = _Bar()
        try:
            record = train(
                plan,
                job_dir,
                data_dir=settings.data_dir,
                models_dir=settings.model_cache,
                hooks=bar,
                resume=not fresh,
            )
        finally:
            bar.close()
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, MethodUnavailable) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(_summary(record))


def _tune_retriever(plan: Any, settings: Any, fresh: bool) -> None:
    """Pairs from the index (or a file), training, then re-embedding the index with it."""
    import shutil

    from retriever.errors import RetrieverError
    from retriever.sources import ModelNotAvailable
    from service.cli import reembed
    from service.loading import tuned_embedder
    from tuner.data import DataError
    from tuner.embed_train import train_retriever
    from tuner.prepare import prepare_pairs
    from tuner.registry import RecordNotFound, RegistryError

    plan.base_model = plan.base_model or settings.embedder
    job_dir = settings.layout.job(f"cli-{plan.name}")
    if job_dir.exists():  # no checkpoints to resume from: a run starts over
        shutil.rmtree(job_dir)
    try:
        needs_index = any(d.synthetic for d in plan.datasets) or plan.retriever.negatives > 0
        retriever = _open_index(settings) if needs_index else None
        try:
            prepared = prepare_pairs(
                plan, job_dir, files_dir=settings.layout.files, retriever=retriever
            )
        finally:
            if retriever is not None:
                retriever.close()
        click.echo(f"pairs: {prepared.train} train, {prepared.val} held out")
        bar = _Bar()
        try:
            record = train_retriever(
                plan,
                job_dir,
                data_dir=settings.data_dir,
                hooks=bar,
                device=settings.device,
                embedder_path=str(settings.embedder_path) if settings.embedder_path else None,
                offline=settings.offline,
            )
        finally:
            bar.close()
        m = record.metrics
        click.echo(
            f"embedder {record.id} ({record.method}) saved: held-out recall@10 "
            f"{_num(m.get('recall@10_before'))} -> {_num(m.get('recall@10_after'))}, "
            f"{m.get('updates')} updates in {m.get('seconds')} s"
        )
        if not plan.retriever.activate:
            click.echo(
                "not re-embedding (retriever.activate false); to switch: "
                f"ragtune reindex --adapter {record.id}"
            )
            return
        retriever = _open_index(settings)
        try:
            result = reembed(retriever, tuned_embedder(record.id, settings))
        finally:
            retriever.close()
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, RetrieverError, ModelNotAvailable, RecordNotFound, RegistryError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"index re-embedded with {record.id}: {result.get('chunks', 0)} chunks switched")


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _prepare_here(plan: Any, job_dir: Path, settings: Any, prepare: Any) -> None:
    """Validate and write the training data (opens the index only for synthetic data)."""
    from tuner.models import load_generator

    if (job_dir / "data" / "manifest.json").is_file() and (job_dir / "checkpoints").is_dir():
        click.echo(f"resuming from {job_dir}")
        return
    synthetic = [d.synthetic for d in plan.datasets if d.synthetic is not None]
    gen = load_generator(plan.base_model, cache_dir=settings.model_cache, offline=settings.offline)
    retriever = _open_index(settings) if synthetic else None
    try:
        uses_model = any(s.generator == "model" for s in synthetic)
        prepared = prepare(
            plan,
            job_dir,
            files_dir=settings.layout.files,
            tokenizer=gen.tokenizer,
            retriever=retriever,
            generator=gen if uses_model else None,
        )
    finally:
        if retriever is not None:
            retriever.close()
    click.echo(f"data: {prepared.train} train, {prepared.val} validation, {prepared.test} test")


def _summary(record: Any) -> str:
    m = record.metrics
    lines = [f"adapter {record.id} ({record.method}) saved"]
    if m.get("first_loss") is not None:
        lines.append(
            f"  loss {m['first_loss']:.3f} -> {m['train_loss']:.3f} in {m['updates']} updates"
        )
    if m.get("best_val_loss") is not None:
        lines.append(f"  best validation loss {m['best_val_loss']:.3f}")
    probe = m.get("probe")
    if probe:
        lines.append(
            f"  forgetting probe: nll {probe['before']['probe_nll']:.3f} -> "
            f"{probe['after']['probe_nll']:.3f}, accuracy {probe['before']['probe_accuracy']:.2f}"
            f" -> {probe['after']['probe_accuracy']:.2f}"
            + ("  (forgetting!)" if probe.get("forgetting") else "")
        )
    return "\n".join(lines)


@main.group()
def adapters() -> None:
    """List, show, delete and promote fine-tuned adapters."""


def _registry() -> Any:
    from tuner.registry import Registry

    return Registry(_settings().layout.adapters)


def _get(registry: Any, adapter_id: str) -> Any:
    try:
        return registry.get(adapter_id)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(_one_line(exc)) from None


@adapters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def adapters_list(as_json: bool) -> None:
    """Adapters in the registry, newest last; stale and promoted ones marked."""
    registry = _registry()
    _mark_stale(registry)
    records = registry.list()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in records], indent=2, default=str))
        return
    if not records:
        click.echo("no adapters yet: train one with 'ragtune tune --recipe configs/...'")
    from service.loading import embedders_in_use

    in_use = embedders_in_use(_settings())
    for r in records:
        flags = [f for f, on in (("promoted", r.promoted), ("stale", r.stale)) if on]
        if r.id in in_use:
            flags.append(f"(the index's {in_use[r.id]})")
        m = r.metrics or {}
        if r.component == "retriever":
            score = m.get("recall@10_after")
            text = f"held-out R@10 {score:.3f}" if isinstance(score, float) else ""
        else:
            val = m.get("best_val_loss")
            text = f"val {val:.3f}" if isinstance(val, float) else ""
        click.echo(f"{r.id:32} {r.component:9} {r.method:14} {text:18} {' '.join(flags)}")


def _mark_stale(registry: Any) -> None:
    """Compare each adapter's training documents with the index, when it can be opened here
    (a running server holds it; GET /v1/adapters does the same check there)."""
    from retriever.errors import DocumentNotFound, RetrieverError

    try:
        retriever = _open_index(_settings())
    except click.ClickException:
        return
    try:

        def versions(ids: list[str]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for doc_id in ids:
                try:
                    out[doc_id] = retriever.get(doc_id).version
                except DocumentNotFound:
                    out[doc_id] = None
            return out

        registry.mark_stale(versions)
    except RetrieverError:
        return
    finally:
        retriever.close()


@adapters.command("show")
@click.argument("adapter_id")
def adapters_show(adapter_id: str) -> None:
    """One adapter: lineage, data, hyperparameters, metrics."""
    from tuner.registry import describe

    click.echo(describe(_get(_registry(), adapter_id)))


@adapters.command("delete")
@click.argument("adapter_id")
@click.option("--force", is_flag=True, help="Delete even the promoted adapter.")
def adapters_delete(adapter_id: str, force: bool) -> None:
    """Delete an adapter from the registry (never the embedder the index uses)."""
    from service.loading import embedders_in_use

    role = embedders_in_use(_settings()).get(adapter_id)
    if role == "embedder" or (role and not force):
        hint = "" if role == "embedder" else "; use --force to delete it anyway"
        raise click.ClickException(f"{adapter_id} is the index's {role}{hint}")
    try:
        _registry().delete(adapter_id, force=force)
    except (LookupError, ValueError, PermissionError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"deleted {adapter_id}")


@adapters.command("promote")
@click.argument("adapter_id")
@click.option("--force", is_flag=True, help="Promote even if its eval gate failed.")
def adapters_promote(adapter_id: str, force: bool) -> None:
    """Make an adapter the default for ft and hybrid modes."""
    try:
        _registry().promote(adapter_id, force=force)
    except (LookupError, ValueError, PermissionError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"promoted {adapter_id}")
