"""`edgekit targets list` and `edgekit bundle browser|ios|android` (registered on the root app).

Imports stay light: profiles are TOML read on demand; bundle builders are imported in the commands.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from edgekit.log import stdout_console

targets_app = typer.Typer(help="Device profiles: which formats, precisions and runtimes a device takes.")
bundle_app = typer.Typer(
    help="Pack a conversion output (edgekit convert --out DIR) for a web page or a mobile app.",
    no_args_is_help=True,
)


class BrowserRuntime(StrEnum):
    tfjs = "tfjs"
    onnxruntime_web = "onnxruntime-web"


@targets_app.command("list")
def targets_list(as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Show every device profile (use with `edgekit convert MODEL --profile NAME`)."""
    from targets.profiles import load_profiles

    profiles = load_profiles()
    if as_json:
        print(json.dumps([p.to_dict() for p in profiles.values()], indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=True)
    for col in ("profile", "converts", "runtime", "bundle", "for"):
        table.add_column(col)
    for p in profiles.values():
        table.add_row(
            p.name,
            "\n".join(f"{t} {', '.join(m for pt, m in p.pairs if pt == t)}" for t in p.targets),
            escape(p.runtime),
            p.bundle or "-",
            escape(p.description),
        )
    stdout_console().print(table)


def _print(info, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.to_dict(), indent=2))
        return
    sizes = ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in info.sizes.items())
    stdout_console().print(
        f"[green]{info.kind} bundle[/] {info.out}: {info.model} {info.target} {info.precision} "
        f"({info.runtime})\n  sizes: {sizes}"
    )


@bundle_app.command("browser")
def bundle_browser(
    converted: Path = typer.Argument(..., help="An `edgekit convert` output dir."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle dir (created; replaced if it is a bundle)."),
    runtime: BrowserRuntime | None = typer.Option(
        None,
        "--runtime",
        help="tfjs (~3 MB runtime) or onnxruntime-web (~15 MB). Default: tfjs if converted.",
    ),
    mode: str | None = typer.Option(None, "--mode", help="Which converted mode (default: fp16, else none)."),
    sample: Path | None = typer.Option(None, "--sample", help=".npz keyed by input names for the demo."),
    as_json: bool = typer.Option(False, "--json", help="Print the bundle manifest as JSON."),
) -> None:
    """Static web folder: index.html demo, edgekit-model.js (load/predict), model, vendored runtime."""
    from targets.bundles.web import build_browser

    info = build_browser(converted, out, runtime.value if runtime else None, mode, sample, force=False)
    _print(info, as_json)


@bundle_app.command("ios")
def bundle_ios(
    converted: Path = typer.Argument(..., help="An `edgekit convert` output dir with a coreml target."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle dir."),
    mode: str | None = typer.Option(
        None, "--mode", help="Which converted mode (default: int8-dynamic, else fp16)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the bundle manifest as JSON."),
) -> None:
    """The .mlpackage, model_card.json, a Swift wrapper generated from the card, and a README."""
    from targets.bundles.mobile import build_ios

    _print(build_ios(converted, out, mode), as_json)


@bundle_app.command("android")
def bundle_android(
    converted: Path = typer.Argument(..., help="An `edgekit convert` output dir with a tflite target."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle dir."),
    mode: str | None = typer.Option(None, "--mode", help="Which converted mode (default: int8, else fp16)."),
    as_json: bool = typer.Option(False, "--json", help="Print the bundle manifest as JSON."),
) -> None:
    """The .tflite, model_card.json, a Kotlin wrapper (LiteRT Interpreter API), and a README."""
    from targets.bundles.mobile import build_android

    _print(build_android(converted, out, mode), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(targets_app, name="targets")
    app.add_typer(bundle_app, name="bundle")
