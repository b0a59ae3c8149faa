"""Apply signed update manifests: verify, download, verify bytes, stage, smoke-test, activate.

Every step is a durable state transition (agent.state) written before it is reported, and every
failure ends on the previous version: the new model is only swapped in (pointer rename + registry
reference swap) after its bytes, its load and its golden smoke test all passed.

Sequences are per device (one verifier): a manifest is acted on once. The retained `desired`
message comes back after every reconnect or restart; a replay of the very manifest the state
file is working on resumes it (signature still checked), a replay of a finished one is ignored.
Accepting a manifest and entering `downloading` are one atomic state write (see
StateStore.max_sequence): a power cut can lose both, never just the update.

One worker thread applies updates in order, but a download never holds it hostage: downloads
are bounded (agent.download_limits), and a newer verified manifest arriving meanwhile cancels
the one in flight (its update ends `superseded`), since `desired` holds one manifest and the
older one could never be accepted again anyway.

An artifact may come as a binary delta against a blob the store holds (agent.delta): the result
is verified against the artifact's signed sha256 before it is staged, and any failure falls
back to the full download. The outcome goes out on `status` as `delta: used|fallback:<reason>`.
The manifest's provenance row for the installed artifact is kept with the pointer entry and
shown in model metadata and /agent/status.

A manifest with mode "shadow" takes the same path up to the smoke test, then ends in state
`shadow` instead of `active`: its version is named as the model's shadow in the store's pointer
(so a restart loads it again) and handed to the mirror (agent.shadow), never to the registry.
Any newer manifest for the model drops its shadow; an active one naming the shadow's sha256 is
its promotion and finds the blob already in the store (content-addressed: no second download).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from agent import delta as D
from agent import state as S
from agent.download import UNREACHABLE, DownloadError, download
from agent.download_limits import CANCELLED
from agent.durable import atomic_write_json, read_json
from agent.faults import crash_point
from agent.metrics import Metrics
from agent.models import LoadedModel, ModelRegistry, load_model
from agent.shadow import SHADOW_THREADS, ShadowMirror
from agent.state import ModelState, StateStore
from agent.store import Entry, ModelStore
from edgekit import provenance as P
from edgekit.formats import runtime_for
from edgekit.modelcard import ModelCard
from edgekit.trust import (
    Manifest,
    ManifestVerifier,
    Root,
    VerificationError,
    canonical_json,
    check_smoke_outputs,
    load_trusted_root,
    smoke_inputs,
    verify_artifact,
)
from edgekit.trust.errors import EXPIRED, REPLAY

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


SUPERSEDED = "superseded"


class UpdateFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class _Interrupted(Exception):
    """The agent is stopping: leave the update in its durable state, the next start resumes it."""


def _update_reason(download_reason: str) -> str:
    """What a failed download is reported as (a cancelled one was replaced by a newer manifest)."""
    return {UNREACHABLE: "download", CANCELLED: SUPERSEDED}.get(download_reason, download_reason)


def _file_type(art) -> str:
    """The store keeps blobs by content and file type (`<sha256>.onnx`): the runtime is picked
    from that suffix. Artifact keys (`onnx-int8-static`) only express the fleet's preference."""
    return Path(art.file).suffix.lstrip(".") or art.format


def runtime_available(file_name: str) -> bool:
    """Can this box run an artifact file? Decided by its type (.onnx/.ort/.tflite), not its key:
    keys name format and precision (`onnx`, `onnx-int8-static`, `tflite-full-int8`)."""
    runtime = runtime_for(file_name)
    if runtime == "onnxruntime":
        return True
    if runtime == "litert":
        import importlib.util

        return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))
    return False


class Updater:
    def __init__(
        self,
        *,
        store: ModelStore,
        states: StateStore,
        registry: ModelRegistry,
        root: Root,
        fleet: str,
        device: str,
        trust_file: Path,
        formats: list[str] | None = None,
        report: Reporter | None = None,
        metrics: Metrics | None = None,
        threads: int | None = None,
        download_opts: dict[str, Any] | None = None,
        base_url: str | None = None,
        labels: dict[str, str] | None = None,
        shadows: ShadowMirror | None = None,
    ):
        self.store, self.states, self.registry = store, states, registry
        self.shadows = shadows  # None: shadow manifests are installed and kept, not compared
        self.fleet, self.device = fleet, device
        self.trust_file = Path(trust_file)
        self.formats = formats or ["onnx", "tflite"]
        self.report_fn = report
        self.metrics = metrics or Metrics()
        self.threads = threads
        self.download_opts = download_opts or {}
        self.base_url = base_url
        self.labels = labels or {}
        saved = read_json(self.trust_file, {}) or {}
        if saved.get("root"):
            try:
                # A rotated root persisted earlier; it was verified against the chain when accepted.
                newer = load_trusted_root(canonical_json(saved["root"]), check_expiry=False)
                if newer.version > root.version:
                    root = newer
            except VerificationError as e:
                log.warning("ignoring persisted root: %s", e)
        # trust.json's last_sequence is only a floor kept for agents upgraded from a version that
        # wrote it before the state: the state files are where acceptance is recorded.
        last_sequence = max(int(saved.get("last_sequence", -1)), self.states.max_sequence())
        self.verifier = ManifestVerifier(root, fleet, device, last_sequence=last_sequence)
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()
        # Set to stop the current job's download: by a newer manifest (submit) or by stop().
        self._job_cancel: threading.Event | None = None
        self._inflight: bytes | None = None  # the manifest the worker is handling
        self._stopping = False
        # model -> (sequence, "used" | "fallback:<reason>") of the update that offered a delta
        self._delta_outcome: dict[str, tuple[int | None, str]] = {}

    # worker ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._queue.put(("recover", None))  # first: finish whatever a crash interrupted
        self._thread = threading.Thread(target=self._loop, name="edgekit-updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)
        job = self._job_cancel
        if job is not None:
            job.set()  # a long download must not delay shutdown; it resumes at the next start
        if self._thread:
            self._thread.join(timeout=30)

    def submit(self, payload: bytes) -> None:
        self._queue.put(("manifest", payload))
        job = self._job_cancel
        if job is not None and self._supersedes(payload):
            log.info("a newer manifest arrived: cancelling the update in progress")
            job.set()

    def _supersedes(self, payload: bytes) -> bool:
        """Would the worker act on `payload`? Checked here, on the receiving thread, so only a
        validly signed, newer manifest for this device may cancel work in progress; a replay
        (the retained copy redelivered on reconnect) or a forgery never does. Verification only
        reads the verifier; the worker thread repeats it before acting."""
        if not payload:
            return False
        try:
            m = self.verifier.verify(payload)
        except Exception:  # any refusal (named or not) is the worker's to report, not ours
            return False
        # The worker accepts a manifest (raising the verifier's floor) only after it dequeued it:
        # a copy of that same manifest redelivered in between (retained + queued session copy)
        # still verifies here, and must not cancel the update it is about to start.
        inflight = _claimed(self._inflight) if self._inflight else {}
        seq = inflight.get("sequence")
        return not (isinstance(seq, int) and m.sequence <= seq)

    def submit_roots(self, payload: bytes) -> None:
        self._queue.put(("roots", payload))

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                kind, payload = item
                self._inflight = payload if kind == "manifest" else None
                self._job_cancel = threading.Event()
                if self._stopping:
                    self._job_cancel.set()
                self.busy.set()
                if kind == "recover":
                    self.recover()
                elif kind == "roots":
                    self.handle_roots(payload)
                else:
                    self.handle(payload)
            except _Interrupted:
                log.info("update interrupted by shutdown; it resumes at the next start")
            except Exception:  # the worker must survive anything a message can do
                log.exception("update worker error")
            finally:
                self._job_cancel = None
                self._inflight = None
                self.busy.clear()
                self._queue.task_done()

    # reporting -------------------------------------------------------------------------------
    def _status(self, st: ModelState, **extra: Any) -> dict[str, Any]:
        rollout = (st.manifest or {}).get("signed", {}).get("rollout") if st.manifest else None
        msg: dict[str, Any] = {
            "device": self.device,
            "state": st.state,
            "model": st.model,
            "version": st.version,
            "sequence": st.sequence,
            "rollout": rollout,
            "reason": st.reason,
            "labels": self.labels,
        }
        if st.detail:
            msg["detail"] = st.detail
        outcome = self._delta_outcome.get(st.model)
        if outcome is not None and outcome[0] == st.sequence:
            msg["delta"] = outcome[1]
        msg.update(extra)
        return msg

    def _emit(self, msg: dict[str, Any]) -> None:
        from edgekit.trust import iso, utcnow

        msg.setdefault("ts", iso(utcnow()))
        if self.report_fn:
            try:
                self.report_fn(msg)
            except Exception:
                log.exception("status report failed")

    def _go(self, model: str, new: str, **changes: Any) -> ModelState:
        st = self.states.transition(model, new, **changes)  # durable first, then reported
        self.metrics.set_update_state(model, new)
        log.info("%s: %s %s%s", model, new, st.version, f" ({st.reason}: {st.detail})" if st.reason else "")
        self._emit(self._status(st))
        return st

    def heartbeat(self) -> list[dict[str, Any]]:
        msgs = []
        states = self.states.all()
        for st in states:
            active = self.store.active(st.model)
            msgs.append(self._status(st, heartbeat=True, active_version=active.version if active else None))
        if not states:
            msgs.append(
                {
                    "device": self.device,
                    "state": "idle",
                    "model": None,
                    "version": None,
                    "sequence": None,
                    "rollout": None,
                    "reason": None,
                    "labels": self.labels,
                    "heartbeat": True,
                }
            )
        for m in msgs:
            self._emit(m)
        return msgs

    def _persist_trust(self) -> None:
        atomic_write_json(
            self.trust_file,
            {"last_sequence": self.verifier.last_sequence, "root": self.verifier.root.envelope},
        )

    # roots -----------------------------------------------------------------------------------
    def handle_roots(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            docs = json.loads(payload)
            raws = [canonical_json(d) for d in (docs if isinstance(docs, list) else [docs])]
            before = self.verifier.root.version
            self.verifier.update_root(raws)
        except (VerificationError, ValueError) as e:
            log.warning("refused root update: %s", e)
            return
        if self.verifier.root.version != before:
            log.info("root rotated v%d -> v%d", before, self.verifier.root.version)
            self._persist_trust()

    # manifests -------------------------------------------------------------------------------
    def handle(self, payload: bytes) -> str:
        """Process one `desired` payload; returns what happened (for tests and logs)."""
        if not payload:
            return "empty"
        try:
            m = self.verifier.verify(payload)
        except VerificationError as e:
            if e.reason in (REPLAY, EXPIRED):
                # The fleet re-publishes desired state byte-identical (broker restarts); a copy of
                # a manifest we already acted on is not a new refusal, even once it has expired.
                outcome = self._on_repeat(payload, resume=e.reason == REPLAY)
                if outcome:
                    return outcome
            claimed = _claimed(payload)
            log.warning("refused manifest (%s): %s", e.reason, e.detail)
            self._emit(
                {
                    "device": self.device,
                    "state": S.FAILED,
                    "model": claimed.get("model"),
                    "version": claimed.get("version"),
                    "sequence": claimed.get("sequence") if isinstance(claimed.get("sequence"), int) else None,
                    "rollout": claimed.get("rollout"),
                    "reason": e.reason,
                    "detail": e.detail,
                    "labels": self.labels,
                    "refused": True,
                }
            )
            return f"refused:{e.reason}"
        self.verifier.accept(m)
        st = self.states.get(m.model)
        if st.state in S.IN_PROGRESS or st.state == S.FAILED:
            # A newer manifest supersedes an interrupted one: close the old attempt cleanly.
            self._fail_and_rollback(m.model, SUPERSEDED, f"sequence {m.sequence} replaced {st.sequence}")
        self._drop_shadow(m.model)  # one shadow per model, and any newer manifest replaces it
        # This one write records both the accepted sequence and the update it starts.
        self._go(m.model, S.DOWNLOADING, version=m.version, sequence=m.sequence, manifest=m.envelope)
        crash_point("after_sequence_persist")
        return self._apply(m)

    def _on_repeat(self, payload: bytes, resume: bool) -> str | None:
        try:
            env = json.loads(payload)
            model = env["signed"]["model"]
        except (ValueError, KeyError, TypeError):
            return None
        st = self.states.get(model)
        if st.manifest is None or canonical_json(st.manifest) != canonical_json(env):
            return None
        if st.state in S.IN_PROGRESS:
            if not resume:
                return None  # an interrupted update whose manifest expired is refused, not resumed
            log.info("%s: resuming sequence %d", model, st.sequence)
            return self._apply(Manifest(st.manifest))
        return "duplicate"  # the retained message of an update already finished

    def recover(self) -> list[str]:
        """At start-up: resume or roll back whatever a crash interrupted; load active models."""
        done = []
        for st in self.states.all():
            action = S.resume_action(st)
            if action == "resume":
                assert st.manifest is not None
                m = self._reverify(st)
                if m is None:
                    done.append(f"{st.model}:rolled_back")
                    continue
                log.info("%s: resuming interrupted update (%s)", st.model, st.state)
                done.append(f"{st.model}:{self._apply(m)}")
            elif action == "rollback":
                self._finish_rollback(st.model)
                done.append(f"{st.model}:rolled_back")
        return done

    def _reverify(self, st: ModelState) -> Manifest | None:
        # Re-check signature and expiry of the stored manifest (the disk is not trusted more
        # than the network); its own sequence is allowed since it is the one being applied.
        v = ManifestVerifier(self.verifier.root, self.fleet, self.device, last_sequence=st.sequence - 1)
        try:
            return v.verify(canonical_json(st.manifest))
        except VerificationError as e:
            self._fail_and_rollback(st.model, e.reason, e.detail)
            return None

    def _pick_artifact(self, m: Manifest):
        arts = m.artifacts
        for fmt in self.formats:
            if fmt in arts and runtime_available(arts[fmt].file):
                return arts[fmt]
        raise UpdateFailed("no_artifact", f"manifest offers {sorted(arts)}, this agent runs {self.formats}")

    def _apply(self, m: Manifest) -> str:
        name = m.model
        try:
            art = self._pick_artifact(m)
            st = self.states.get(name)
            if st.state == S.DOWNLOADING:
                self._download(art, m)
                st = self._go(name, S.VERIFYING)
            if st.state == S.VERIFYING:
                blob = self.store.blob_path(art.sha256, _file_type(art))
                if not blob.exists():
                    part = self.store.part_path(art.sha256, _file_type(art))
                    if not part.exists():  # crashed after download returned, before commit? redo
                        self._download(art, m)
                    try:
                        verify_artifact(part, art.size, art.sha256)
                    except VerificationError as e:
                        part.unlink(missing_ok=True)
                        raise UpdateFailed(e.reason, e.detail) from e
                    self.store.commit_blob(part, art.sha256, _file_type(art))
                else:
                    try:
                        verify_artifact(blob, art.size, art.sha256)
                    except VerificationError as e:
                        blob.unlink(missing_ok=True)
                        raise UpdateFailed(e.reason, e.detail) from e
                st = self._go(name, S.STAGED)
            # staged / smoke_tested: (re)load and (re)test; both are idempotent and cheap
            model = self._load(m, art, threads=SHADOW_THREADS if m.mode == "shadow" else self.threads)
            if st.state == S.STAGED:
                self._smoke(m, art, model)
                st = self._go(name, S.SMOKE_TESTED)
            if m.mode == "shadow":
                return self._install_shadow(m, art, model)
            entry = Entry(
                version=m.version,
                sha256=art.sha256,
                format=_file_type(art),
                sequence=m.sequence,
                card=m.model_card,
                smoke=None,
                extra=self._entry_extra(m, art),
            )
            self.store.activate(name, entry)  # the atomic pointer swap: durable from here on
            self.registry.put(model)  # hot swap: in-flight requests finish on the old object
            self.metrics.set_model(name, model.version, art.sha256)
            self._go(name, S.ACTIVE)
            self.store.gc(keep=self._in_progress_digests())
            return "active"
        except _Interrupted:
            raise  # not a failure: the durable state stays as it is, for the next start
        except UpdateFailed as e:
            self._fail_and_rollback(name, e.reason, e.detail)
            return f"rolled_back:{e.reason}"
        except Exception as e:  # anything unexpected still ends on the previous version
            log.exception("%s: update failed", name)
            self._fail_and_rollback(name, "internal", f"{type(e).__name__}: {e}")
            return "rolled_back:internal"

    def _install_shadow(self, m: Manifest, art, model: LoadedModel) -> str:
        """Keep the smoke-tested version beside the active one: named in the pointer (durable
        first), then compared on mirrored requests. The registry, which serves, never sees it."""
        self.store.set_shadow(
            m.model,
            Entry(
                version=m.version,
                sha256=art.sha256,
                format=_file_type(art),
                sequence=m.sequence,
                card=m.model_card,
                extra=self._entry_extra(m, art),
            ),
        )
        if self.shadows is not None:
            self.shadows.set(model)
        self._go(m.model, S.SHADOW)
        self.store.gc(keep=self._in_progress_digests())
        return "shadow"

    def _drop_shadow(self, name: str) -> None:
        """Forget the model's shadow (its blob stays until gc: a promotion reuses it)."""
        self.store.set_shadow(name, None)
        if self.shadows is not None:
            self.shadows.drop(name)

    def _in_progress_digests(self) -> set[str]:
        out = set()
        for st in self.states.all():
            if st.state in S.IN_PROGRESS and st.manifest:
                for a in st.manifest["signed"]["artifacts"].values():
                    out.add(a["sha256"])
                    out.update(d["sha256"] for d in a.get("delta") or ())  # resumable deltas
        return out

    def _entry_extra(self, m: Manifest, art) -> dict[str, Any]:
        """What the pointer keeps beside the version: the artifact's provenance, the delta outcome."""
        extra: dict[str, Any] = {"artifact": art.format}
        prov = P.for_artifact(m.provenance, art.format)
        if prov is not None:
            extra["provenance"] = prov
        outcome = self._delta_outcome.get(m.model)
        if outcome is not None and outcome[0] == m.sequence:
            extra["delta"] = outcome[1]
        return extra

    def _held_blobs(self, name: str) -> dict[str, Path]:
        """Blobs this model's pointer names that are in the store: the bases a delta may use."""
        held = {}
        for e in self.store.pointer(name):
            if e is not None and self.store.has_blob(e.sha256, e.format):
                held[e.sha256] = self.store.blob_path(e.sha256, e.format)
        return held

    def _via_delta(self, art, m: Manifest) -> bool:
        """Stage `art` from a delta if the manifest offers one this device can use. False: fetch
        the full artifact (the outcome says why when a delta was offered)."""
        if self.store.part_path(art.sha256, _file_type(art)).exists():
            return False  # a full download was started (an earlier fallback): resume that
        choice = D.pick(art, self._held_blobs(m.model))
        if choice is None:
            return False
        if isinstance(choice, str):
            self._delta_outcome[m.model] = (m.sequence, D.fallback(choice))
            return False
        try:
            D.install(
                art,
                choice,
                self._held_blobs(m.model)[choice.from_sha256],
                self.store.part_path(choice.sha256, "delta"),
                self.store.part_path(art.sha256, _file_type(art)),
                lambda url, part, size, sha: self._fetch(url, part, size, sha),
            )
        except D.DeltaFailed as e:
            log.warning("%s: delta not usable (%s); downloading the full artifact", m.model, e)
            self._delta_outcome[m.model] = (m.sequence, D.fallback(e.reason))
            return False
        except UpdateFailed as e:
            if e.reason == SUPERSEDED:
                raise
            log.warning("%s: delta download failed (%s); downloading the full artifact", m.model, e)
            self._delta_outcome[m.model] = (m.sequence, D.fallback(e.reason))
            return False
        self._delta_outcome[m.model] = (m.sequence, D.USED)
        return True

    def _download(self, art, m: Manifest) -> None:
        if self.store.has_blob(art.sha256, _file_type(art), art.size):
            return  # content-addressed: verified bytes are never fetched again
        if self._via_delta(art, m):
            return
        self._fetch(art.url, self.store.part_path(art.sha256, _file_type(art)), art.size, art.sha256)

    def _fetch(self, url: str, part: Path, size: int, sha256: str) -> None:
        """One resumable, bounded download; failures become UpdateFailed (or _Interrupted)."""
        url = urljoin(self.base_url, url) if self.base_url else url
        try:
            download(
                url,
                part,
                size=size,
                sha256=sha256,
                cancel=self._job_cancel,
                **self.download_opts,
            )
        except DownloadError as e:
            if e.reason == CANCELLED and self._stopping:
                raise _Interrupted(str(e)) from None
            detail = "a newer manifest arrived during the download" if e.reason == CANCELLED else str(e)
            raise UpdateFailed(_update_reason(e.reason), detail) from None

    def _load(self, m: Manifest, art, threads: int | None) -> LoadedModel:
        try:
            card = ModelCard.from_dict(m.model_card) if m.model_card else None
        except (TypeError, ValueError, KeyError):
            card = None
        try:
            model = load_model(
                m.model,
                self.store.blob_path(art.sha256, _file_type(art)),
                m.version,
                card=card,
                sha256=art.sha256,
                threads=threads,
            )
        except Exception as e:
            raise UpdateFailed("load", f"{type(e).__name__}: {e}") from e
        prov = P.for_artifact(m.provenance, art.format)
        if prov is not None:
            model.extra["provenance"] = prov  # model metadata shows it (agent.server)
        return model

    def _smoke(self, m: Manifest, art, model: LoadedModel) -> None:
        if not m.smoke_test:
            return
        try:
            outputs = model.run(smoke_inputs(m.smoke_test))
        except Exception as e:
            raise UpdateFailed("smoke_test", f"golden input failed to run: {e}") from e
        res = check_smoke_outputs(m.smoke_test, outputs, precision=art.precision)
        if not res.ok:
            raise UpdateFailed("smoke_test", res.detail or f"max abs {res.max_abs_error:.3g}")

    def _fail_and_rollback(self, name: str, reason: str, detail: str) -> None:
        st = self.states.get(name)
        if st.state != S.FAILED:
            if S.FAILED not in S._ALLOWED[st.state]:
                return  # nothing in progress: nothing to roll back
            self._go(name, S.FAILED, reason=reason, detail=detail)
        self._finish_rollback(name)

    def _finish_rollback(self, name: str) -> None:
        st = self.states.get(name)
        active = self.store.active(name)
        target_sha = None
        if st.manifest:
            target_sha = {a["sha256"] for a in st.manifest["signed"]["artifacts"].values()}
        if (
            active
            and target_sha
            and active.sha256 in target_sha
            and (active.sequence, active.version) == (st.sequence, st.version)
        ):
            active = self.store.rollback(name)  # the failed version had been swapped in already
        self._ensure_loaded(name, active)
        if st.state == S.FAILED:
            self._go(name, S.ROLLED_BACK, reason=st.reason, detail=st.detail)
        self.store.prune_parts(keep=self._in_progress_digests())

    def _ensure_loaded(self, name: str, entry: Entry | None) -> None:
        current = self.registry.get(name)
        if entry is None:
            if current is not None and current.sha256 is not None:
                self.registry.remove(name)
            return
        if current is not None and current.sha256 == entry.sha256 and current.version == entry.version:
            return
        self.registry.put(self.load_entry(name, entry))

    def load_entry(self, name: str, entry: Entry, shadow: bool = False) -> LoadedModel:
        card = ModelCard.from_dict(entry.card) if entry.card else None
        model = load_model(
            name,
            self.store.blob_path(entry.sha256, entry.format),
            entry.version,
            card=card,
            sha256=entry.sha256,
            threads=SHADOW_THREADS if shadow else self.threads,
        )
        if entry.extra.get("provenance"):
            model.extra["provenance"] = entry.extra["provenance"]
        if not shadow:
            self.metrics.set_model(name, entry.version, entry.sha256)
        return model

    def load_active(self, verify: bool = True) -> list[str]:
        """Load every model the store points at (at start-up, before serving)."""
        from agent.store import sha256_file

        loaded = []
        for name in self.store.model_names():
            active, previous = self.store.pointer(name)
            for entry in (active, previous):
                if entry is None:
                    continue
                blob = self.store.blob_path(entry.sha256, entry.format)
                if verify and (not blob.exists() or sha256_file(blob) != entry.sha256):
                    log.error("%s: blob of version %s is missing or damaged", name, entry.version)
                    continue
                self.registry.put(self.load_entry(name, entry))
                if entry is previous:
                    log.warning("%s: serving previous version %s", name, entry.version)
                loaded.append(name)
                break
            self._load_shadow(name, verify)
        return loaded

    def _load_shadow(self, name: str, verify: bool) -> None:
        """At start-up: the shadow the pointer names goes back to the mirror (statistics restart)."""
        entry = self.store.shadow(name)
        if entry is None or self.shadows is None:
            return
        from agent.store import sha256_file

        blob = self.store.blob_path(entry.sha256, entry.format)
        if verify and (not blob.exists() or sha256_file(blob) != entry.sha256):
            log.error(
                "%s: blob of shadow version %s is missing or damaged: shadow dropped", name, entry.version
            )
            self.store.set_shadow(name, None)
            return
        try:
            self.shadows.set(self.load_entry(name, entry, shadow=True))
        except Exception as e:  # a shadow that no longer opens is dropped, never fatal
            log.error("%s: shadow version %s does not load (%s): shadow dropped", name, entry.version, e)
            self.store.set_shadow(name, None)

    def snapshot(self) -> dict[str, Any]:
        models = {}
        for st in self.states.all():
            active = self.store.active(st.model)
            models[st.model] = asdict(st) | {
                "manifest": None,
                # of the version the pointer names (what serves), not of the update in progress
                "provenance": active.extra.get("provenance") if active else None,
                "delta": active.extra.get("delta") if active else None,
                "shadow": shadow.version if (shadow := self.store.shadow(st.model)) else None,
            }
        return {
            "last_sequence": self.verifier.last_sequence,
            "root_version": self.verifier.root.version,
            "models": models,
        }


def _claimed(payload: bytes) -> dict[str, Any]:
    """Unverified fields of a refused manifest, for the status report only."""
    try:
        signed = json.loads(payload)["signed"]
        return {
            k: signed.get(k)
            for k in ("model", "version", "sequence", "rollout")
            if isinstance(signed.get(k), str | int)
        }
    except Exception:
        return {}
