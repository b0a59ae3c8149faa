"""The `edgekit` command. Each part registers its own sub-commands; this module only wires them.

The parts' CLI modules are imported lazily (`_LazyGroup`): only the one whose command runs, so
`edgekit serve` and `edgekit agent run` never import the fleet, converters or targets CLIs
(start-up time is readiness time on a device). `edgekit --help` imports them all to list
every command with its own help text. Heavy work (onnx, onnxruntime, toolchains) is imported
inside the command functions.
"""

from __future__ import annotations

import importlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.log import FORMAT_ENV, setup_logging

# Top-level command -> the module whose `register(app)` adds it, in `edgekit --help` order after
# this module's own commands (commands before groups, as typer lists them).
# tests/agent/test_start_path.py checks it against what each register() adds.
LAZY_COMMANDS: dict[str, str] = {
    "convert": "converters.cli",
    "inspect": "converters.cli",
    "serve": "agent.cli",
    "toolchain": "converters.cli",
    "targets": "targets.cli",
    "bundle": "targets.cli",
    "fleet": "fleet.cli",
    "agent": "agent.cli",
}


class _LazyGroup(TyperGroup):
    """The root group: a part's commands are built the first time one of them is looked up."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*(n for n in self.commands if n not in LAZY_COMMANDS), *LAZY_COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            for name, cmd in _part_commands(LAZY_COMMANDS[cmd_name]).items():
                self.commands.setdefault(name, cmd)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and args[0] not in LAZY_COMMANDS:
            for name in LAZY_COMMANDS:  # an unknown command: load all, so "Did you mean" sees all
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def _part_commands(module_name: str) -> dict[str, Any]:
    """The click commands `module_name`.register() adds to an app, by name."""
    part = typer.Typer()
    importlib.import_module(module_name).register(part)
    return dict(typer.main.get_group(part).commands)


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
    cls=_LazyGroup,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)


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
    scenario: str | None = typer.Option(
        None,
        "--scenario",
        help="Run one flow of the rollout checks instead: shadow-canary, gate-abort, drift, delta "
        "or provenance (exit 0 only if its expected outcome happened).",
    ),
    broker: str = typer.Option(
        "embedded", "--broker", help="--scenario only: embedded, or mosquitto (the system's, started here)."
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="--scenario only: keep conversions here for reuse (default: in --workdir)."
    ),
) -> None:
    """Run the whole path on embedded defaults: convert, fleet server, cloud, 3 agents, 2-wave rollout,
    local inference and forced cloud fallbacks; exit 0 only if every step really happened.
    With --scenario NAME, one rollout flow end to end, exit 0 only if its outcome really happened."""
    import json

    from rich.console import Console

    console = Console(stderr=as_json)
    console.width = max(console.width, 140)
    if scenario is None:
        from edgekit.demo import run_demo

        summary = run_demo(workdir, console)
    else:
        from edgekit.scenarios import run_scenario
        from edgekit.scenarios.harness import DemoError

        try:
            summary = run_scenario(scenario, workdir, console, broker=broker, cache=cache)
        except DemoError as e:
            if as_json:  # a script reading stdout still gets one object
                print(json.dumps({"scenario": scenario, "ok": False, "error": str(e)}, indent=2))
            raise
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


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    try:
        app(args=argv, prog_name=prog_name, standalone_mode=True)
    except EdgekitError as e:
        from rich.console import Console  # only for an error: not on the start path
        from rich.markup import escape

        # the message is text, not markup: `pip install 'edgekit[litert]'` must print its brackets;
        # soft_wrap: an error is one line, however long
        err = Console(stderr=True, soft_wrap=True)
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
