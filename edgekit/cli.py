"""The `edgekit` command. Each part registers its own sub-commands; this module only wires them.

Sub-command modules are imported here, so they must stay light at import time: heavy work
(onnx, onnxruntime, toolchains) is imported inside the command functions.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.log import FORMAT_ENV, setup_logging

app = typer.Typer(
    name="edgekit",
    help=(
        "Take a trained model from a laptop to a fleet of edge devices.\n\n"
        "convert: quantize and export to ONNX, TFLite, Core ML, TF.js (validated in each runtime). "
        "toolchain: install the isolated converter environments. "
        "fleet: signed updates over MQTT and staged rollouts. "
        "agent / serve: the on-device daemon and the Open Inference Protocol server."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def _version(value: bool) -> None:
    if value:
        print(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    log_format: str | None = typer.Option(
        None,
        "--log-format",
        envvar=FORMAT_ENV,
        help="Logs on stderr as text (rich on a terminal, plain lines otherwise) or json (one object per line).",
        show_envvar=True,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    try:
        setup_logging(verbose, log_format)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--log-format") from None


@app.command("demo")
def demo(
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Keep everything here (default: a temp dir)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON at the end."),
) -> None:
    """Run the whole path on embedded defaults: convert, fleet server, cloud, 3 agents, 2-wave rollout,
    local inference and forced cloud fallbacks; exit 0 only if every step really happened."""
    import json

    from edgekit.demo import run_demo

    console = Console(stderr=as_json)
    console.width = max(console.width, 140)
    summary = run_demo(workdir, console)
    if as_json:
        print(json.dumps(summary, indent=2))


class SchemaKind(StrEnum):
    card = "card"
    report = "report"
    manifest = "manifest"


@app.command("schema")
def schema(
    kind: SchemaKind = typer.Argument(
        ...,
        help="card (model_card.json), report (report.json) or manifest (the signed part of an update manifest).",
    ),
) -> None:
    """Print the JSON Schema of a file edgekit writes: the model card, the conversion report, the manifest."""
    import json

    from pydantic import TypeAdapter

    if kind is SchemaKind.card:
        from edgekit.modelcard import ModelCard

        doc = TypeAdapter(ModelCard).json_schema()
    elif kind is SchemaKind.report:
        from converters.report import Report

        doc = TypeAdapter(Report).json_schema()
    else:
        from edgekit.trust.manifest_schema import ManifestBody

        doc = ManifestBody.model_json_schema()
    print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **doc}, indent=2))


def _register() -> None:
    from agent import cli as agent_cli
    from converters import cli as converters_cli
    from fleet import cli as fleet_cli
    from targets import cli as targets_cli

    for module in (converters_cli, targets_cli, fleet_cli, agent_cli):
        module.register(app)


_register()


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    try:
        app(args=argv, prog_name=prog_name, standalone_mode=True)
    except EdgekitError as e:
        # the message is text, not markup: `pip install 'edgekit[litert]'` must print its brackets
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
