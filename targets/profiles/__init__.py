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
from edgekit.formats import TARGETS

HERE = Path(__file__).parent

SUPPORTED_MODES: dict[str, tuple[str, ...]] = {t: tuple(f.modes) for t, f in TARGETS.items()}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    targets: list[str]
    modes: list[str] | dict[str, list[str]]  # one list for every target, or one per target
    runtime: str
    bundle: str | None = None  # the `edgekit bundle` kind that packs this profile's artifacts
    devices: list[str] = field(default_factory=list)
    notes: str = ""
    # `NAME:D,D,...` like --input-shape, for profiles written for one model (flags override per input)
    input_shapes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        if isinstance(self.modes, dict):
            return [(t, m) for t in self.targets for m in self.modes.get(t, [])]
        return [(t, m) for t in self.targets for m in self.modes]

    @property
    def all_modes(self) -> list[str]:
        return list(dict.fromkeys(m for _, m in self.pairs))

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
    if isinstance(prof.modes, dict) and set(prof.modes) - set(prof.targets):
        raise EdgekitError(
            f"profile {prof.name}: modes for targets it does not list: "
            f"{sorted(set(prof.modes) - set(prof.targets))}"
        )
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
    profile's list for that dimension only. The keys of `chosen_by` are exactly the (target,
    mode) pairs to convert: the profile's own pairs (which may differ per target) when no flag
    is given, else the cross product. Each maps to "profile:NAME" when the profile lists it,
    else "flag".
    """
    prof = get_profile(name)
    listed = prof.pairs
    if not targets and not modes:
        pairs = listed
    else:
        final_t = list(targets) if targets else list(prof.targets)
        final_m = list(modes) if modes else prof.all_modes
        pairs = [(t, m) for t in final_t for m in final_m]
    chosen_by = {p: (f"profile:{prof.name}" if p in set(listed) else "flag") for p in pairs}
    return list(dict.fromkeys(t for t, _ in pairs)), list(dict.fromkeys(m for _, m in pairs)), chosen_by
