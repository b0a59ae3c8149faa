"""shadow-canary: 1.0.0 everywhere, then two releases rolled out as shadows with
`--shadow --promote 'top1_agreement>=0.9' --min-shadow-requests 150` while live traffic runs (the
agents mirror every answered request: `shadow_sample = 1.0`, so the comparison fills in seconds).
- 1.1.0 is 1.0.0 with noise on its last layer's weights (models.perturbed_head: top-1 agrees on
  ~77% of the digits). Expected: the rollout aborts on the promotion rule, no agent ever answers
  with 1.1.0, and every agent drops the shadow and keeps serving 1.0.0.
- 1.2.0 is the fine-tuned CNN (models.finetuned: agrees on ~100%). Expected: every agent's
  shadow is promoted and activated with no second download (each agent's log shows exactly one
  artifact GET during the rollout: the shadow's install), and every agent answers with 1.2.0."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgekit.scenarios import builds, models
from edgekit.scenarios.harness import MODEL, Harness, Traffic, check, eval_inputs, wait_for

ABOUT = "a worse model shadowed beside the active one is never promoted; a good one is"
AGREEMENT = 0.9
RULE = f"top1_agreement>={AGREEMENT:g}"
MIN_REQUESTS = 150  # per device; ~2-4 s of this traffic
AGENT_CONFIG = {"agent": {"shadow_sample": 1.0}}  # mirror every answer (the default is 0.5)
OLD, WORSE, GOOD = "1.0.0", "1.1.0", "1.2.0"
# what `httpx` logs (INFO) for each request the agent's downloader makes: artifacts and deltas
ARTIFACT_GET = re.compile(r"HTTP Request: GET \S+/artifacts/([0-9a-f]{64})")


def worse(cache: Path) -> Path:
    """1.0.0 with its last layer perturbed, converted like every release (cached)."""
    return builds.converted(
        models.perturbed_head(models.SOURCE, cache / "sources" / "digits_perturbed.onnx"), cache
    )


def artifact_gets(h: Harness, device: str) -> list[str]:
    """The artifact digests `device` has GET so far, in order (from its log)."""
    log = h.logs / f"{device}.log"
    return ARTIFACT_GET.findall(log.read_text(errors="replace")) if log.exists() else []


class Watch:
    """The versions each agent said it had active while a shadow rollout ran (polled with the
    rollout's status)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.active: dict[str, set[str]] = {a.device: set() for a in h.agents}

    def __call__(self, _rollout: dict[str, Any]) -> None:
        for a in self.h.agents:
            if (m := a.status()["models"].get(MODEL)) is not None:
                self.active[a.device].add(m["version"])


def judged(h: Harness, rid: str) -> dict[str, dict[str, Any]]:
    """Per device, the shadow stats the fleet judged it by (the last its heartbeats reported
    before promotion or rollback, kept on the rollout's membership rows) and its state."""
    rows = h.db_rows(
        "SELECT device, state, shadow_requests, top1_agreement FROM rollout_devices WHERE rollout=?", (rid,)
    )
    return {
        r["device"]: {
            "state": r["state"],
            "requests": r["shadow_requests"] or 0,
            "top1_agreement": r["top1_agreement"],
        }
        for r in rows
    }


def shadow_rollout(h: Harness, version: str, watch: Watch) -> dict[str, Any]:
    st = h.start_rollout(version, shadow=True, promote=[RULE], min_shadow_requests=MIN_REQUESTS)
    h.console.print(
        f"  rollout {st['id']}: {version} --shadow --promote '{RULE}' --min-shadow-requests {MIN_REQUESTS}"
    )
    st = h.wait_rollout(st["id"], timeout=120, on_poll=watch)
    h.console.print(f"  rollout {st['id']}: {st['state']} ({st['reason']})")
    return st


def run(h: Harness, cache: Path) -> dict[str, Any]:
    base, perturbed, tuned = builds.base(cache), worse(cache), builds.finetuned(cache)
    h.release(base, OLD)
    with Traffic(h.agents, eval_inputs(360)) as traffic:
        # The worse release: shadowed, compared, refused.
        h.publish(perturbed, WORSE)
        seen_bad = Watch(h)
        st_bad = shadow_rollout(h, WORSE, seen_bad)
        check(st_bad["state"] == "aborted", f"the shadow rollout of {WORSE} aborted ({st_bad['state']})")
        check(
            (st_bad["reason"] or "").startswith(f"promotion rule {RULE} breached"),
            f"the promotion rule stopped {WORSE} ({st_bad['reason']})",
        )
        check(st_bad["totals"]["active"] == 0, f"no device counts {WORSE} active ({st_bad['totals']})")
        check(all(w["promoted"] == 0 for w in st_bad["waves"]), f"no device was promoted to {WORSE}")
        for a in h.agents:  # the rollback's manifest drops the shadow; 1.0.0 never stopped serving
            wait_for(
                f"{a.device} dropped the {WORSE} shadow",
                lambda a=a: (
                    a.status()["updates"]["models"][MODEL]["shadow"] is None and a.active_version() == OLD
                ),
                60,
            )
        # The breach came from a device that compared enough requests (the first to get there;
        # the other may have compared fewer when the rollout ended), and none was promoted.
        bad = judged(h, st_bad["id"])
        compared = {d: s["top1_agreement"] for d, s in bad.items() if s["requests"] >= MIN_REQUESTS}
        check(bool(compared), f"a device compared {MIN_REQUESTS} requests of {WORSE}'s shadow ({bad})")
        check(
            all(v is not None and v < AGREEMENT for v in compared.values()),
            f"the agents measured {WORSE} below {AGREEMENT} ({compared})",
        )
        # The good release: shadowed, compared, promoted in place.
        gets_before = {a.device: len(artifact_gets(h, a.device)) for a in h.agents}
        good_sha = next(a["sha256"] for a in h.publish(tuned, GOOD)["artifacts"] if a["key"] == "onnx")
        st_good = shadow_rollout(h, GOOD, Watch(h))
        check(
            st_good["state"] == "completed", f"the shadow rollout of {GOOD} completed ({st_good['reason']})"
        )
        promoted = sum(w["promoted"] for w in st_good["waves"])
        check(promoted == len(h.agents), f"every device was promoted from the shadow ({promoted})")
        for a in h.agents:
            wait_for(f"{a.device} serves {GOOD}", lambda a=a: a.active_version() == GOOD, 60)
        n = len(traffic.served)
        wait_for(
            "every agent answered after the promotion",
            lambda: len(traffic.served) > n + 4 * len(h.agents),
            30,
        )
        last = {a.device: traffic.last_version(a.device) for a in h.agents}
        good = judged(h, st_good["id"])
        served = {a.device: traffic.versions(a.device) for a in h.agents}
    gets = {a.device: artifact_gets(h, a.device)[gets_before[a.device] :] for a in h.agents}
    agents = []
    for a in h.agents:
        d = a.device
        check(WORSE not in served[d], f"{d} never answered with {WORSE} ({served[d]})")
        check(WORSE not in seen_bad.active[d], f"{d} never had {WORSE} active ({seen_bad.active[d]})")
        check(last[d] == GOOD, f"{d} answers with {GOOD} at the end ({last[d]})")
        good_stats = good[d]
        check(
            good_stats["requests"] >= MIN_REQUESTS and (good_stats["top1_agreement"] or 0) >= AGREEMENT,
            f"{d} was promoted on {GOOD}'s shadow agreeing >= {AGREEMENT} over {MIN_REQUESTS} requests"
            f" ({good_stats})",
        )
        # One GET: the shadow's install (the full artifact or a delta). The promotion, an active
        # manifest naming the same sha256, found the blob in the agent's store.
        check(len(gets[d]) == 1, f"{d} downloaded {GOOD} once, for the shadow ({len(gets[d])} GETs)")
        agents.append(
            {
                "device": d,
                "served_versions": served[d],
                "active": last[d],
                "worse_shadow_requests": bad[d]["requests"],
                "worse_top1_agreement": bad[d]["top1_agreement"],
                "good_top1_agreement": good_stats["top1_agreement"],
                "good_shadow_requests": good_stats["requests"],
                "artifact_gets_for_good": len(gets[d]),
                "downloaded": "artifact" if gets[d][0] == good_sha else "delta",
            }
        )
    h.console.print(
        f"  {WORSE}: agreement {', '.join(f'{v:.2f}' for v in compared.values())} < {AGREEMENT}"
        f" -> aborted, never active; {GOOD}: promoted on {promoted} agents, one download each"
    )

    def summary(st: dict[str, Any]) -> dict[str, Any]:
        keys = ("shadowing", "promoted", "worst_agreement")
        return {
            "id": st["id"],
            "state": st["state"],
            "reason": st["reason"],
            "waves": [{k: w[k] for k in keys} for w in st["waves"]],
        }

    return {
        "rule": RULE,
        "min_shadow_requests": MIN_REQUESTS,
        "worse": {"version": WORSE, "rollout": summary(st_bad)},
        "good": {"version": GOOD, "rollout": summary(st_good)},
        "requests": len(traffic.served),
        "agents": agents,
    }
