"""Which versions of a model stay loaded side by side: the version policy, as pure functions.

Config (per model, read from `[models.NAME] version_policy`):

    version_policy = {latest = 2}             # the 2 most recently activated versions
    version_policy = {specific = ["1", "3"]}  # exactly these (the active one is always kept)
    version_policy = "all"                    # every version ever activated since start-up

The default is `{latest = 1}`: an update replaces the model, as before versions existed.

"Latest" means most recently *activated*, not the highest version string: agent versions are
free-form ("1.0", "2024-05-rc1"), and a rollback re-activates an older one, which must then be
the version an unversioned request gets. That active version is always loaded, whatever the
policy says, so a policy can never leave a model without a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.errors import ConfigError

CONFIG_KEY = "version_policy"


@dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = 1  # keep the N most recently activated; None = no count limit
    specific: frozenset[str] | None = None  # keep only these (plus the active one)

    def describe(self) -> dict[str, Any]:
        """Triton's model-config spelling of the policy."""
        if self.specific is not None:
            return {"specific": {"versions": sorted(self.specific)}}
        if self.latest is None:
            return {"all": {}}
        return {"latest": {"num_versions": self.latest}}


DEFAULT = VersionPolicy()
ALL = VersionPolicy(latest=None)


def parse_policy(raw: Any, where: str) -> VersionPolicy:
    """A `version_policy` config value as a VersionPolicy, or ConfigError naming `where`."""
    if raw is None:
        return DEFAULT
    if raw == "all":
        return ALL
    if isinstance(raw, Mapping) and set(raw) == {"latest"}:
        n = raw["latest"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}: latest must be an integer >= 1, not {n!r}")
        return VersionPolicy(latest=n)
    if isinstance(raw, Mapping) and set(raw) == {"specific"}:
        versions = raw["specific"]
        if not isinstance(versions, Sequence) or isinstance(versions, str) or not versions:
            raise ConfigError(f"{where}: specific must be a non-empty list of versions")
        return VersionPolicy(latest=None, specific=frozenset(str(v) for v in versions))
    raise ConfigError(f'{where}: expected {{latest = N}}, {{specific = ["1", ...]}} or "all", not {raw!r}')


def policies_from_config(models: Mapping[str, Mapping[str, Any]]) -> dict[str, VersionPolicy]:
    """`cfg["models"]` -> {name: policy} for the models that set one."""
    out: dict[str, VersionPolicy] = {}
    for name, m in models.items():
        if m.get(CONFIG_KEY) is not None:
            out[name] = parse_policy(m[CONFIG_KEY], f"[models.{name}] {CONFIG_KEY}")
    return out


def to_keep(policy: VersionPolicy, activated: Sequence[str]) -> list[str]:
    """Of the versions in activation order (the last is the active one), those the policy keeps."""
    if not activated:
        return []
    active = activated[-1]
    keep = list(activated)
    if policy.specific is not None:
        keep = [v for v in keep if v in policy.specific or v == active]
    if policy.latest is not None:
        keep = keep[-policy.latest :]
    return keep
