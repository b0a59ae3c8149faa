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


def serve(
    model: list[Path] = typer.Argument(..., help="Model file(s): .onnx, .ort or .tflite."),
    port: int = typer.Option(8000, "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    name: list[str] = typer.Option(None, "--name", "-n", help="Model name(s) (default: file stem)."),
    version: str = typer.Option("1", "--version", help="Version reported in responses."),
    threads: int = typer.Option(0, "--threads", help="Runtime intra-op threads (0 = runtime default)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Larger requests get 413."),
) -> None:
    """Serve model files over the Open Inference Protocol (KServe V2 REST), e.g. as the cloud endpoint."""
    from agent.serve import serve_files

    serve_files(
        model,
        names=name or None,
        host=host,
        port=port,
        version=version,
        threads=threads or None,
        max_body=int(max_body_mb * (1 << 20)),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
    app.command("serve")(serve)
