"""The contract between the shared pipeline and a per-target backend plug-in.

The pipeline owns everything common (import, optimize, legalize, data, validation, report);
a backend only turns the prepared fp32 ONNX into files for the modes it was asked for.
Validation is the pipeline's job: a backend returns files, and only a backend whose runtime
cannot run here (Core ML on Linux) returns outputs it computed itself, labelled as simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgekit.modelcard import ModelCard


@dataclass
class ExportJob:
    target: str
    model_path: Path  # optimized fp32 ONNX; a private copy the backend may hand to tools that mutate it
    card: ModelCard
    modes: list[str]  # modes to produce, all supported by the target (see converters/formats.py)
    out_dir: Path  # DIR/<target>/, created by the pipeline
    inputs_npz: Path  # validation/eval inputs keyed by input name (float32, NCHW as in the ONNX)
    calibration_npz: Path | None = None  # required for "int8"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"layout": "nchw"}


@dataclass
class ExportResult:
    mode: str
    files: list[Path] = field(default_factory=list)  # main artifact first; all under job.out_dir
    companions: list[Path] = field(default_factory=list)  # same model in another container (e.g. .ort)
    error: str | None = None  # set when this mode failed; other modes still count
    error_kind: str | None = None  # "unsupported_op" | "backend_crash" | ...
    simulated_outputs: Path | None = None  # npz of outputs on inputs_npz, for runtimes that cannot run here
    runtime_note: str | None = None  # e.g. "simulated: Core ML runtime needs macOS"
    checks: dict[str, Any] = field(default_factory=dict)  # static checks (spec, op list, weight dtypes)
    versions: dict[str, str] = field(default_factory=dict)  # converter/tool versions used
    output_names: list[str] | None = None  # artifact outputs in ONNX order when the tool renamed them
    # output name -> transpose giving the ONNX layout back (onnx2tf leaves some outputs channels-last)
    output_perms: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0  # conversion time for this mode (shared runs are split evenly)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.files)


DEFAULT_TIMEOUT = 1800.0


def timeout_of(job: ExportJob) -> float:
    """Seconds a toolchain worker may take for this job (`--timeout`); then its rows say timeout."""
    return float(job.options.get("timeout") or DEFAULT_TIMEOUT)


class Backend(Protocol):
    target: str

    def export(self, job: ExportJob) -> list[ExportResult]: ...
