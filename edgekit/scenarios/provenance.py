"""provenance: a release whose embedded conversion report was altered never becomes active.

1.0.0 runs everywhere; 1.1.0 (the fine-tuned CNN) is published. Its report is then altered to
claim other bytes (1.0.0's) scoring 99.9%, at the three places an attacker could:
1. in the fleet's registry database: the fleet refuses to sign a manifest whose report does not
   describe its artifact (the rollout is refused at start, `provenance_mismatch`);
2. on the network, after signing (an agent's MQTT path runs through edgekit.scenarios.mitm): the
   signature no longer covers what arrives, and the agent refuses it (`bad_signature`);
3. on the network, re-signed with the fleet's release key (an attacker holding the online key):
   the signature holds, and the agent's own check of the report against the artifact refuses it
   (`provenance_mismatch`).
Expected, from the fleet's records of the agents' status reports, the agents' logs and their
status: each agent refused with its reason, the rollout aborted, 1.1.0 was never active.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.scenarios import builds
from edgekit.scenarios.harness import MODEL, Harness, check, wait_for
from edgekit.scenarios.mitm import DesiredRewriter
from edgekit.trust import SigningKey, dumps, sha256_file, sign

ABOUT = "a manifest whose embedded conversion report was altered is refused"
TARGET = "1.1.0"
CLAIMED_TOP1 = 0.999
# device index -> (how its manifest is altered on the way, the refusal reasons that fit)
EXPECTED = {
    0: ("altered after signing", ("bad_signature", "threshold")),
    1: ("altered and re-signed", ("provenance_mismatch",)),
}


def altered(doc: dict[str, Any], other_sha256: str) -> dict[str, Any]:
    """The report as an attacker would want it: the onnx artifact is other bytes, scoring 99.9%."""
    row = doc["artifacts"]["onnx"]
    row = {**row, "sha256": other_sha256, "accuracy": {**row.get("accuracy", {}), "top1": CLAIMED_TOP1}}
    return {**doc, "artifacts": {**doc["artifacts"], "onnx": row}}


def forge(payload: bytes, other_sha256: str, key: SigningKey | None) -> bytes:
    """A `desired` payload with TARGET's embedded report altered; re-signed with `key` if given.
    Anything else (other versions, clears) passes unchanged."""
    try:
        doc = json.loads(payload)
        signed = doc["signed"]
    except (ValueError, KeyError, TypeError):
        return payload
    if signed.get("version") != TARGET or not signed.get("provenance"):
        return payload
    signed = {**signed, "provenance": altered(signed["provenance"], other_sha256)}
    return dumps(sign(signed, [key]) if key else {**doc, "signed": signed})


def setup(h: Harness, cache: Path) -> None:
    """Each agent's MQTT path through an attacker's relay (before the agents connect)."""
    from fleet.keys import KeyStore

    other = sha256_file(builds.base(cache) / "onnx" / "model.onnx")
    release_key = KeyStore(h.fleet_state).release_key()
    relays: dict[str, DesiredRewriter] = h.scratch.setdefault("relays", {})
    for i, spec in enumerate(h.specs):
        key = release_key if i == 1 else None
        fn: Callable[[str, bytes], bytes] = lambda _t, p, key=key: forge(p, other, key)  # noqa: E731
        relay = DesiredRewriter(h.broker_port, fn).start()
        h.on_exit(relay.stop)
        h.mqtt_port[spec.device] = relay.port
        relays[spec.device] = relay


def tamper_registry(h: Harness, other_sha256: str) -> str:
    """Alter TARGET's report in the fleet's database; returns the original, to restore."""
    db = sqlite3.connect(h.fleet_state / "fleet.db", timeout=30)
    try:
        (doc,) = db.execute(
            "SELECT doc FROM provenance WHERE model=? AND version=?", (MODEL, TARGET)
        ).fetchone()
        with db:
            db.execute(
                "UPDATE provenance SET doc=? WHERE model=? AND version=?",
                (json.dumps(altered(json.loads(doc), other_sha256)), MODEL, TARGET),
            )
        return doc
    finally:
        db.close()


def restore_registry(h: Harness, doc: str) -> None:
    db = sqlite3.connect(h.fleet_state / "fleet.db", timeout=30)
    try:
        with db:
            db.execute("UPDATE provenance SET doc=? WHERE model=? AND version=?", (doc, MODEL, TARGET))
    finally:
        db.close()


def run(h: Harness, cache: Path) -> dict[str, Any]:
    base, tuned = builds.base(cache), builds.finetuned(cache)
    old = next(a for a in h.release(base, "1.0.0")["artifacts"] if a["key"] == "onnx")
    h.publish(tuned, TARGET)

    # 1. The registry's copy altered: the fleet will not sign it.
    original = tamper_registry(h, old["sha256"])
    try:
        h.start_rollout(TARGET)
        refused_at_fleet = ""
    except EdgekitError as e:
        refused_at_fleet = str(e)
    finally:
        restore_registry(h, original)
    check(
        "provenance_mismatch" in refused_at_fleet,
        f"the fleet refused to sign the altered report ({refused_at_fleet!r})",
    )
    check(
        not [r for r in h.admin.get("/api/rollouts") if r["version"] == TARGET],
        f"no rollout of {TARGET} started",
    )
    h.console.print(
        f"  registry altered -> the fleet refuses to sign: {refused_at_fleet.splitlines()[0][:110]}"
    )

    # 2-3. The genuine manifest, altered on each agent's network path.
    # max_failure_rate 1: the rollout ends once every device answered, so each refusal is on record
    # (an early abort would race the second device's report).
    st = h.wait_rollout(h.start_rollout(TARGET, max_failure_rate=1.0)["id"], timeout=120)
    h.console.print(f"  rollout {st['id']}: {st['state']} ({st['reason']})")
    check(st["state"] == "aborted", f"the rollout of the altered release aborted (it is {st['state']})")
    check(st["totals"]["active"] == 0, f"no device activated {TARGET}")

    def reasons() -> dict[str, str | None] | None:
        """Each device's refusal as its status report told the fleet, once all have one."""
        rows = h.db_rows("SELECT device, reason FROM rollout_devices WHERE rollout=?", (st["id"],))
        got = {r["device"]: r["reason"] for r in rows}
        return got if len(got) == len(h.agents) and all(got.values()) else None

    got = wait_for("every agent's refusal reached the fleet", reasons, 30)
    agents = []
    for i, a in enumerate(h.agents):
        how, fits = EXPECTED[i]
        reason = got[a.device]
        check(reason in fits, f"{a.device} ({how}) refused with {' or '.join(fits)} (it reported {reason})")
        check(h.scratch["relays"][a.device].rewritten > 0, f"{a.device}'s manifest was altered on the way")
        log = a.svc.log_path.read_text(errors="replace")
        check(f"refused manifest ({reason})" in log, f"{a.device}'s log names the refusal ({reason})")
        model = a.status()["models"][MODEL]
        check(
            (model["version"], model["sha256"]) == ("1.0.0", old["sha256"]),
            f"{a.device} still serves 1.0.0 (it serves {model['version']})",
        )
        agents.append({"device": a.device, "tampering": how, "refused": reason, "active": model["version"]})
        h.console.print(f"  {a.device}: report {how} -> refused ({reason}); serves 1.0.0")
    return {
        "rollout": {"id": st["id"], "state": st["state"], "reason": st["reason"]},
        "altered": {"version": TARGET, "claims_sha256": old["sha256"], "claims_top1": CLAIMED_TOP1},
        "fleet_refused": refused_at_fleet.splitlines()[0],
        "agents": agents,
    }
