"""Device profiles: "a Raspberry Pi", "an iPhone app", "a web page" -> targets, precisions, runtime.

A profile is data: one TOML file per profile in this folder (name = file stem). It lists the
targets and quantize modes to convert, the runtime that runs them on the device, which bundle
packs them, and notes. Adding a profile is adding a file; no code path knows profile names.

The pipeline converts every target x every mode (skipping unsupported pairs with a reason), so a
profile states one `targets` list and one `modes` list, and `load_profiles` refuses a profile
whose pairs a target cannot take: a profile never produces "skipped" rows by itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

HERE = Path(__file__).parent

# Kept here (not imported from converters.formats) because targets must not import converters;
# tests check this table against converters.formats so the two cannot drift.
SUPPORTED_MODES: dict[str, tuple[str, ...]] = {
    "onnx": ("none", "fp16", "int8-dynamic", "int8"),
    "tflite": ("none", "fp16", "int8-dynamic", "int8"),
    "coreml": ("none", "fp16", "int8-dynamic", "palettize6", "palettize4"),
    "tfjs": ("none", "fp16", "int8-dynamic"),
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    targets: list[str]
    modes: list[str]
    runtime: str
    bundle: str | None = None  # the `edgekit bundle` kind that packs this profile's artifacts
    devices: list[str] = field(default_factory=list)
    notes: str = ""

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(t, m) for t in self.targets for m in self.modes]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        return d


def _parse(path: Path) -> Profile:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgekitError(f"profile {path.name}: invalid TOML: {e}") from e
    known = set(Profile.__dataclass_fields__) - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EdgekitError(f"profile {path.name}: unknown keys {unknown}", hint=f"allowed: {sorted(known)}")
    missing = [k for k in ("description", "targets", "modes", "runtime") if k not in raw]
    if missing:
        raise EdgekitError(f"profile {path.name}: missing keys {missing}")
    prof = Profile(name=path.stem, **raw)
    for t, m in prof.pairs:
        if t not in SUPPORTED_MODES:
            raise EdgekitError(f"profile {prof.name}: unknown target {t!r}")
        if m not in SUPPORTED_MODES[t]:
            raise EdgekitError(f"profile {prof.name}: target {t} does not support mode {m!r}")
    return prof


def load_profiles(directory: Path = HERE) -> dict[str, Profile]:
    """Every profile in `directory`, by name (sorted)."""
    return {p.stem: _parse(p) for p in sorted(directory.glob("*.toml"))}


def get_profile(name: str) -> Profile:
    profiles = load_profiles()
    if name not in profiles:
        raise EdgekitError(
            f"unknown profile {name!r}", hint=f"choose from {', '.join(profiles)} (edgekit targets list)"
        )
    return profiles[name]


def resolve_profile(
    name: str, targets: list[str] | None, modes: list[str] | None
) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """The targets and modes to convert for profile `name`, with explicit flags overriding it.

    `targets` / `modes` are what the user passed (None: not passed). A flag replaces the
    profile's list for that dimension only. `chosen_by` maps each (target, mode) the profile
    itself lists and that is still requested to "profile:NAME"; every other pair is "flag"
    (that is also the pipeline's default for pairs absent from the map).
    """
    prof = get_profile(name)
    final_t = list(targets) if targets else list(prof.targets)
    final_m = list(modes) if modes else list(prof.modes)
    listed = set(prof.pairs)
    chosen_by = {
        (t, m): (f"profile:{prof.name}" if (t, m) in listed else "flag") for t in final_t for m in final_m
    }
    return final_t, final_m, chosen_by
