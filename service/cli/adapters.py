"""``ragtune adapters``: list, show, delete and promote what the tuners saved in the registry."""

from __future__ import annotations

import json
from typing import Any

import click

from service.cli.common import load_settings, main, open_index
from service.runtime import one_line


@main.group()
def adapters() -> None:
    """List, show, delete and promote fine-tuned adapters."""


def _registry() -> Any:
    from service.loading import registry_from_settings

    return registry_from_settings(load_settings())


def _get(registry: Any, adapter_id: str) -> Any:
    try:
        return registry.get(adapter_id)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(one_line(exc)) from None


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

    in_use = embedders_in_use(load_settings())
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
        retriever = open_index(load_settings())
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
    from tuner.record import describe

    click.echo(describe(_get(_registry(), adapter_id)))


@adapters.command("delete")
@click.argument("adapter_id")
@click.option("--force", is_flag=True, help="Delete even the promoted adapter.")
def adapters_delete(adapter_id: str, force: bool) -> None:
    """Delete an adapter from the registry (never the embedder the index uses)."""
    from service.loading import embedders_in_use

    role = embedders_in_use(load_settings()).get(adapter_id)
    if role == "embedder" or (role and not force):
        hint = "" if role == "embedder" else "; use --force to delete it anyway"
        raise click.ClickException(f"{adapter_id} is the index's {role}{hint}")
    try:
        _registry().delete(adapter_id, force=force)
    except (LookupError, ValueError, PermissionError) as exc:
        raise click.ClickException(one_line(exc)) from None
    click.echo(f"deleted {adapter_id}")


@adapters.command("promote")
@click.argument("adapter_id")
@click.option("--force", is_flag=True, help="Promote even if its eval gate failed.")
def adapters_promote(adapter_id: str, force: bool) -> None:
    """Make an adapter the default for ft and hybrid modes."""
    try:
        _registry().promote(adapter_id, force=force)
    except (LookupError, ValueError, PermissionError) as exc:
        raise click.ClickException(one_line(exc)) from None
    click.echo(f"promoted {adapter_id}")
