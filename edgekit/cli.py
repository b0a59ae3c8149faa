"""The `edgekit` command. Each part registers its own sub-commands; this module only wires them.

Sub-command modules are imported here, so they must stay light at import time: heavy work
(onnx, onnxruntime, toolchains) is imported inside the command functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.log import setup_logging

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
    add_completion=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    setup_logging(verbose)


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


def _register() -> None:
    from agent import cli as agent_cli
    from converters import cli as converters_cli
    from fleet import cli as fleet_cli
    from targets import cli as targets_cli

    for module in (converters_cli, targets_cli, fleet_cli, agent_cli):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except EdgekitError as e:
        # the message is text, not markup: `pip install 'edgekit[litert]'` must print its brackets
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
