"""``ragtune serve``, ``config`` and ``models``: run the server, show the settings and where
the models resolve."""

from __future__ import annotations

import json

import click

from service.cli.common import load_settings, main


@main.command()
@click.option("--host", default=None, help="Address to bind (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from settings: 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the assistant over HTTP on the embedded defaults."""
    import uvicorn

    from service.app import create_app
    from service.auth import check_bind
    from service.runtime import configure_logging

    settings = load_settings({"host": host, "port": port})
    try:
        check_bind(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # X-Forwarded-For only from the proxies named: uvicorn would trust any local process's
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
    )


@main.command()
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def config(fmt: str) -> None:
    """Print the effective configuration, secrets masked."""
    data = load_settings().masked()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@main.command()
@click.option("--load", is_flag=True, help="Load both configured models (converting a GGUF once).")
def models(load: bool) -> None:
    """Show the model presets and where the configured embedder and generator resolve."""
    from retriever.embedder import EMBEDDER_PRESETS, resolve_embedder
    from retriever.sources import ModelNotAvailable
    from service.runtime import configure_logging
    from tuner.models import GENERATOR_PRESETS, resolve_generator

    settings = load_settings()
    configure_logging("warning")
    for preset in [*EMBEDDER_PRESETS.values(), *GENERATOR_PRESETS.values()]:
        click.echo(f"{preset.role:9} {preset.name:40} {preset.hub_id}  ({preset.notes})")
    click.echo("")
    failed = False
    for role, name, resolver, path in (
        ("embedder", settings.embedder, resolve_embedder, settings.embedder_path),
        ("generator", settings.generator, resolve_generator, settings.generator_path),
    ):
        try:
            found = resolver(name, local_path=path, offline=settings.offline)
            click.echo(f"{role}: {name} -> {found.path} [{found.source}]")
        except ModelNotAvailable as exc:
            click.echo(str(exc), err=True)
            failed = True
    if failed:
        raise SystemExit(1)
    if load:
        from service.loading import embedder_from_settings, generator_from_settings

        emb = embedder_from_settings(settings)
        gen = generator_from_settings(settings)
        click.echo(f"loaded embedder ({emb.dim}-d) and generator from {gen.weights_dir}")
