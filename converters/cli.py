"""`edgekit convert` and `edgekit toolchain ...`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from edgekit import formats
from edgekit.log import stdout_console

toolchain_app = typer.Typer(
    help="Install and list the isolated converter environments (TFLite/TF.js: onnx2tf + TensorFlow; "
    "Core ML: coremltools + torch). They never touch your own Python environment.",
    no_args_is_help=True,
)

Target = Enum("Target", {t: t for t in formats.TARGETS}, type=str)  # type: ignore[misc]
Mode = Enum("Mode", {m: m for m in formats.ALL_MODES}, type=str)  # type: ignore[misc]


def _modes_help() -> str:
    lines = []
    for t, f in formats.TARGETS.items():
        lines.append(f"{t}: " + ", ".join(f"{m}={p.label}" for m, p in f.modes.items()))
    return "; ".join(lines)


def convert(
    model: str = typer.Argument(
        ..., help="An .onnx file, a .keras/.h5 file or SavedModel dir, or sample:digits."
    ),
    target: list[Target] = typer.Option(
        None, "--target", "-t", help="Export target; repeat for several. Default: all four."
    ),
    quantize: list[Mode] = typer.Option(
        None,
        "--quantize",
        "-q",
        help=f"Precision mode; repeat for several. Default: none (fp32). {_modes_help()}.",
    ),
    profile: str | None = typer.Option(
        None, "--profile", help="A device profile (see `edgekit targets list`)."
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help=".npz keyed by input names; required for int8 (static)."
    ),
    eval_data: Path | None = typer.Option(
        None, "--eval", help=".npz keyed by input names plus 'labels': top-1 for every artifact."
    ),
    max_drop: float | None = typer.Option(
        None, "--max-drop", help="Fail (exit 1) when an artifact's top-1 drops more than this many points."
    ),
    input_shape: list[str] = typer.Option(
        None,
        "--input-shape",
        help="NAME:D,D,... for dynamic dims the data does not give (repeatable). D is an int or LO..HI "
        "(Core ML keeps a range flexible; TFLite/TF.js take the data's size or LO). A dynamic leading "
        "dim (the batch axis) stays dynamic unless given.",
    ),
    freeze_input: list[str] = typer.Option(
        None,
        "--freeze-input",
        help="An input that is really a parameter (axes, pads, weights exported as inputs) becomes a "
        "constant with its value from --eval/--calibration (the same in every sample). Repeatable.",
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds one target's conversion may take; then its rows say timeout."
    ),
    layout: str = typer.Option(
        "nchw", "--layout", help="TFLite/TF.js input layout: nchw (as the ONNX) or nhwc."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name for the card (default: file stem)."),
    labels: Path | None = typer.Option(None, "--labels", help="Text file, one class label per line."),
    out: Path = typer.Option(Path("edgekit-out"), "--out", "-o", help="Output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Quantize and export MODEL to ONNX, TFLite, Core ML and TF.js, validating every artifact in its own runtime.

    Writes OUT/<target>/..., OUT/model_card.json and OUT/report.json. Exit code 1 when any artifact
    failed, did not match the fp32 reference within its bound, or dropped more than --max-drop.
    """
    from converters.pipeline import convert as run
    from converters.report import print_table

    targets = [t.value for t in target] if target else None
    modes = [m.value for m in quantize] if quantize else None
    chosen_by = {}
    pairs = None
    shapes = list(input_shape or [])
    if profile:
        from targets.profiles import get_profile, resolve_profile

        targets, modes, chosen_by = resolve_profile(profile, targets, modes)
        pairs = list(chosen_by)  # a profile may give each target its own modes
        # the profile's shapes first: a flag for the same input replaces it
        shapes = list(get_profile(profile).input_shapes) + shapes
    report = run(
        model,
        targets=targets or list(formats.TARGETS),
        modes=modes or ["none"],
        out=out,
        calibration=calibration,
        eval_data=eval_data,
        max_drop=max_drop,
        layout=layout,
        name=name,
        labels=labels.read_text().split() if labels else None,
        chosen_by=chosen_by,
        pairs=pairs,
        profile=profile,
        progress=not as_json,
        input_shapes=shapes or None,
        timeout=timeout,
        freeze_inputs=freeze_input or None,
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_table(report, stdout_console())
    if not report.ok:
        raise typer.Exit(1)


def inspect(
    model: Path = typer.Argument(..., help="An .onnx file."),
    target: list[Target] = typer.Option(None, "--target", "-t", help="Targets to check; default all four."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
) -> None:
    """Show MODEL's inputs/outputs (dynamic dims, integer ranges), its ops, and per target the passes that
    would apply, the dims it needs pinned and the ops the conformance matrix saw fail. No toolchain runs."""
    from converters.inspect import inspect_model, print_inspection

    info = inspect_model(model, [t.value for t in target] if target else None)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_inspection(info, stdout_console())


@toolchain_app.command("install")
def toolchain_install(
    names: list[str] = typer.Argument(
        ..., help="tflite, tfjs, coreml or all (tflite and tfjs share one env)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if installed."),
) -> None:
    """Build toolchain environments from the lock files shipped with edgekit (cached; needs the package index once)."""
    from converters.toolchains import manager

    wanted = (
        list(manager.TOOLCHAINS)
        if "all" in names
        else list(dict.fromkeys(manager.resolve(n).name for n in names))
    )
    console = Console(stderr=True)
    for n in wanted:
        tc = manager.resolve(n)
        if tc.installed() and not force:
            console.print(f"{n}: already installed at {tc.root}")
            continue
        with console.status(f"installing {n} toolchain ({tc.description})"):
            manager.install(n, force=force)
        console.print(f"{n}: installed at {tc.root}")


@toolchain_app.command("list")
def toolchain_list(as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Show each toolchain, what it provides, and whether it is installed."""
    from rich.table import Table

    from converters.toolchains import manager

    rows = manager.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("name", "provides", "installed", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(r["provides"]),
            "yes" if r["installed"] else "no: edgekit toolchain install " + r["name"],
            r["path"],
        )
    stdout_console().print(table)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("inspect")(inspect)
    app.add_typer(toolchain_app, name="toolchain")
