"""The `edgekit serve` command: OIP (KServe V2 / Triton HTTP) on plain model files.

Light on purpose (no numpy, no onnxruntime at import): `edgekit --help` registers it.
`python -m agent.serve_cli` runs the same command on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def serve(
    model: list[Path] = typer.Argument(..., help="Model file(s): .onnx, .ort or .tflite."),
    port: int = typer.Option(8000, "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    name: list[str] = typer.Option(
        None,
        "--name",
        "-n",
        help="Model name per file (default: file stem). Repeat a name to serve versions.",
    ),
    model_version: list[str] = typer.Option(
        ["1"],
        "--model-version",
        help="Model version: one for every file, or one per file (files sharing a --name are versions "
        "of one model, loaded side by side; the last one listed answers unversioned requests).",
    ),
    threads: int = typer.Option(0, "--threads", help="Runtime intra-op threads (0 = runtime default)."),
    inter_op_threads: int = typer.Option(
        0,
        "--inter-op-threads",
        help="onnxruntime inter-op threads (0 = default; >1 runs branches in parallel).",
    ),
    memory_arena: bool = typer.Option(
        True, "--memory-arena/--no-memory-arena", help="onnxruntime's CPU memory arena."
    ),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One run on zeros before serving."),
    max_batch_size: int = typer.Option(
        0,
        "--max-batch-size",
        help="Dynamic batching: samples per run for models with a batch axis (0 = off).",
    ),
    max_queue_delay_us: int = typer.Option(
        500, "--max-queue-delay-us", help="Dynamic batching: how long a request may wait for others."
    ),
    preferred_batch_size: list[int] = typer.Option(
        None, "--preferred-batch-size", help="Dynamic batching: a preferred batch size (repeatable)."
    ),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Larger requests get 413."),
) -> None:
    """Serve model files over the Open Inference Protocol (KServe V2 REST), e.g. as the cloud endpoint."""
    from agent.batcher import BatchingConfig
    from agent.models import RuntimeTuning
    from agent.serve import serve_files
    from edgekit.errors import ConfigError

    batching = None
    if max_batch_size:
        try:
            batching = BatchingConfig(max_batch_size, max_queue_delay_us, tuple(preferred_batch_size or ()))
        except ValueError as e:
            raise ConfigError(f"batching: {e}") from None

    serve_files(
        model,
        names=name or None,
        host=host,
        port=port,
        version=model_version,
        threads=threads or None,
        max_body=int(max_body_mb * (1 << 20)),
        batching=batching,
        tuning=RuntimeTuning(threads or None, inter_op_threads or None, memory_arena, warmup),
    )


def main(argv: list[str] | None = None) -> None:
    from edgekit.errors import EdgekitError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    try:
        app(args=argv, prog_name="edgekit serve", standalone_mode=True)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
