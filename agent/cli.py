"""CLI commands of this package (registered on the root `edgekit` app).

Imports stay inside the command functions: `edgekit --help` must not load onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import typer

agent_app = typer.Typer(help="The on-device daemon: signed updates, local inference, cloud fallback.")


@agent_app.command("run")
def agent_run(
    config: Path = typer.Option(..., "--config", "-c", help="agent.toml (see deploy/agent.toml)."),
) -> None:
    """Run the agent daemon until SIGTERM/SIGINT."""
    from agent import prefetch

    prefetch.start()  # uvicorn's import overlaps the models' load (agent/prefetch.py)
    from agent.daemon import run_daemon

    run_daemon(config)


@agent_app.command("check")
def agent_check(
    config: Path = typer.Option(..., "--config", "-c", help="agent.toml to validate."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate agent.toml (and the environment's EDGEKIT_* overrides) and the files it names:
    "ok" and exit 0, or one line per problem and exit 2. Writes nothing."""
    from agent.config import file_problems, load_agent_config
    from edgekit.settings import collect_problems, print_check

    raise typer.Exit(print_check(collect_problems(lambda: file_problems(load_agent_config(config))), as_json))


def register(app: typer.Typer) -> None:
    from agent.serve_cli import serve

    app.add_typer(agent_app, name="agent")
    app.command("serve")(serve)
