"""`edgekit fleet ...` commands. Imports stay light here: heavy modules load inside commands.

How commands reach the server: `keys` and `publish` work directly on the state directory
(files + SQLite in WAL mode, safe while the server runs); everything that drives or reads live
state (rollouts, devices) calls the server's admin API on loopback with the token it wrote to
<state_dir>/admin.token, because the rollout engine lives in the server process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="fleet.toml (default: built-in defaults + env)")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")

fleet_app = typer.Typer(
    help="Fleet server: keys, registry, signed manifests over MQTT, staged rollouts.", no_args_is_help=True
)
keys_app = typer.Typer(help="Root and release keys (root.json).", no_args_is_help=True)
rollout_app = typer.Typer(
    help="Staged rollouts: start, status, pause, resume, abort, cancel, list.", no_args_is_help=True
)
devices_app = typer.Typer(
    help="Devices: list them (no subcommand), enroll (MQTT credentials + bundle), revoke."
)
fleet_app.add_typer(keys_app, name="keys")
fleet_app.add_typer(rollout_app, name="rollout")
fleet_app.add_typer(devices_app, name="devices")
db_app = typer.Typer(help="The fleet database ([server] db): schema migrations.", no_args_is_help=True)
tokens_app = typer.Typer(help="Admin API tokens, stored hashed in the database.", no_args_is_help=True)
fleet_app.add_typer(db_app, name="db")
fleet_app.add_typer(tokens_app, name="tokens")


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")


def _cfg(path: Path | None) -> dict[str, Any]:
    from fleet import config

    return config.load(path)


def _print_json(obj: Any) -> None:
    from fleet.timestamps import with_iso  # a server older than ISO timestamps sends epochs only

    typer.echo(json.dumps(with_iso(obj), indent=2, sort_keys=True))


def _check_card(src: Path) -> None:
    """Refuse a model card that does not say what each tensor is (no dtype or shape): the
    fleet could not build a smoke test, and devices could not check requests against it."""
    from pydantic import TypeAdapter, ValidationError

    from edgekit.modelcard import ModelCard
    from edgekit.protocol import describe
    from fleet.errors import FleetError

    path = src / "model_card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # missing or not JSON: the registry says so with its own hint
    try:
        TypeAdapter(ModelCard).validate_python(card)
    except ValidationError as e:
        raise FleetError(
            f"{path} is not a valid model card: {describe(e)}",
            hint="re-run `edgekit convert` (every input and output needs a dtype and a shape); "
            "`edgekit schema card` prints the format",
        ) from None


def _client(config: Path | None) -> Any:
    from fleet.client import AdminClient

    return AdminClient(_cfg(config))


@fleet_app.command("check")
def check(
    config: Path = typer.Option(..., "--config", "-c", help="fleet.toml to validate."),
    as_json: bool = JsonOpt,
) -> None:
    """Validate fleet.toml (and the environment's EDGEKIT_* overrides): "ok" and exit 0, or one
    line per problem and exit 2. Writes nothing."""
    from edgekit.settings import collect_problems, print_check
    from fleet import config as fc

    raise typer.Exit(print_check(collect_problems(lambda: fc.file_problems(fc.load(config))), as_json))


# ---- keys ------------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init(
    config: Path | None = ConfigOpt,
    expires_days: int = typer.Option(365, help="Validity of root.json."),
    force: bool = typer.Option(False, help="Overwrite existing keys (enrolled agents will refuse!)."),
    as_json: bool = JsonOpt,
) -> None:
    """Create an offline root key and an online release key, and root.json v1 signed by root."""
    from fleet import config as fc
    from fleet.keys import KeyStore

    cfg = _cfg(config)
    ks = KeyStore(fc.state_dir(cfg))
    root = ks.init(cfg["server"]["fleet"], expires_days, force)
    info = {
        "root_json": str(ks.root_json),
        "version": root.version,
        "expires": root.signed["expires"],
        "keys_dir": str(ks.keys_dir),
    }
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"wrote {ks.root_json} (v{root.version}, expires {root.signed['expires']})")
        typer.echo(f"private keys (0600) in {ks.keys_dir}: move root.pem offline; agents get root.json only")


@keys_app.command("rotate")
def keys_rotate(
    config: Path | None = ConfigOpt,
    new_root_key: bool = typer.Option(False, help="Also replace the root key (needs the old one)."),
    expires_days: int = typer.Option(365),
    as_json: bool = JsonOpt,
) -> None:
    """Issue a new release key in root.json version+1, signed by the old root (and the new one)."""
    from fleet import config as fc
    from fleet.errors import ServerUnreachableError
    from fleet.keys import KeyStore

    cfg = _cfg(config)
    ks = KeyStore(fc.state_dir(cfg))
    root = ks.rotate(expires_days, new_root_key)
    reloaded = False
    try:  # a running server must sign with the new key and republish the chain
        _client(config).post("/api/keys/reload")
        reloaded = True
    except ServerUnreachableError:
        pass
    info = {"version": root.version, "root_json": str(ks.root_json), "server_reloaded": reloaded}
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"root.json v{root.version} written; server {'reloaded' if reloaded else 'not running'}")


# ---- serve / publish ---------------------------------------------------------------------------
@fleet_app.command("serve")
def serve(config: Path | None = ConfigOpt) -> None:
    """Run the fleet server (embedded MQTT broker, SQLite, artifact HTTP) until Ctrl-C."""
    import signal
    import threading

    from edgekit.sdnotify import Watchdog, notify
    from fleet.server import FleetServer

    cfg = _cfg(config)
    srv = FleetServer(cfg)
    srv.start()
    b, h, a = cfg["broker"], cfg["http"], cfg["admin"]
    typer.echo(
        f"fleet {cfg['server']['fleet']!r}: mqtt {b['host']}:{b['port']}"
        f" ({'embedded' if b['embedded'] else 'external'}), artifacts {h['public_url']},"
        f" admin http://{a['host']}:{a['port']}, state {srv.state_dir}"
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # systemd Type=notify: srv.start() returned, so the broker, the MQTT link and both HTTP
    # listeners are up. The watchdog vouches for the rollout engine's thread.
    notify("READY=1")
    watchdog = Watchdog.from_env(lambda: srv._thread is not None and srv._thread.is_alive())
    if watchdog is not None:
        watchdog.start()
    done.wait()
    notify("STOPPING=1")
    if watchdog is not None:
        watchdog.stop()
    srv.stop()


@fleet_app.command("publish")
def publish(
    src: Path = typer.Argument(..., help="Output directory of `edgekit convert`."),
    model: str = typer.Option(..., "--model", help="Model name in the registry."),
    version: str = typer.Option(..., "--version", help="Version string, e.g. 1.2.0."),
    force: bool = typer.Option(False, help="Replace an already published version."),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Store the artifacts content-addressed and record the model card (no server needed)."""
    from fleet import config as fc
    from fleet.server import open_state

    cfg = _cfg(config)
    _check_card(src)
    db, _store, registry = open_state(fc.state_dir(cfg), cfg["artifacts"], cfg["server"]["db"])
    try:
        stored = registry.publish(src, model, version, force)
        smoke = registry.version(model, version)["smoke_test"] is not None
    finally:
        db.close()
    rows = [
        {"key": a.key, "sha256": a.sha256, "size": a.size, "file": a.file, "precision": a.precision}
        for a in stored
    ]
    if as_json:
        _print_json({"model": model, "version": version, "artifacts": rows, "smoke_test": smoke})
        return
    typer.echo(
        f"published {model} {version}: {len(rows)} artifact(s), smoke test: {'yes' if smoke else 'no'}"
    )
    for r in rows:
        typer.echo(f"  {r['key']:<14} {r['size']:>10} B  {r['sha256'][:16]}  {r['file']}")


models_app = typer.Typer(help="Published model versions: list them (no subcommand), show one.")
fleet_app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Published model versions."""
    if ctx.invoked_subcommand is not None:
        return
    from fleet import config as fc
    from fleet.server import open_state

    cfg = _cfg(config)
    db, _s, registry = open_state(fc.state_dir(cfg), cfg["artifacts"], cfg["server"]["db"])
    try:
        rows = registry.list()
    finally:
        db.close()
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['model']} {r['version']}")


@models_app.command("show")
def models_show(
    model: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Model version."),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One published version: its artifacts and its provenance (the signed conversion report)."""
    from edgekit.provenance import lines
    from fleet import config as fc
    from fleet.server import open_state

    cfg = _cfg(config)
    db, _s, registry = open_state(fc.state_dir(cfg), cfg["artifacts"], cfg["server"]["db"])
    try:
        v = registry.version(model, version)
    finally:
        db.close()
    arts = [
        {"key": a.key, "sha256": a.sha256, "size": a.size, "file": a.file, "precision": a.precision}
        for a in v["artifacts"]
    ]
    if as_json:
        _print_json({"model": model, "version": version, "artifacts": arts, "provenance": v["provenance"]})
        return
    typer.echo(
        f"{model} {version}: {len(arts)} artifact(s), smoke test: {'yes' if v['smoke_test'] else 'no'}"
    )
    for a in arts:
        typer.echo(f"  {a['key']:<14} {a['size']:>10} B  {a['sha256'][:16]}  {a['file']}")
    for line in lines(v["provenance"]):
        typer.echo(line)


@fleet_app.command("drift")
def drift(
    model: str = typer.Argument(..., help="Model name."),
    version: str | None = typer.Option(
        None, "--version", help="Only this version (default: every version reported)."
    ),
    by: str = typer.Option("site", "--by", help="Device label whose values are the cohorts."),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Drift of what devices served against the release's baseline: PSI and KS per cohort and tensor."""
    from urllib.parse import quote, urlencode

    query = urlencode({k: v for k, v in (("version", version), ("by", by)) if v})
    doc = _client(config).get(f"/api/drift/{quote(model, safe='')}?{query}")
    if as_json:
        _print_json(doc)
        return
    from rich.table import Table

    from edgekit.log import stdout_console

    def num(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    if not doc["versions"]:
        typer.echo(f"{model}: no device has reported drift yet")
    for v in doc["versions"]:
        if not v["baseline"]:
            typer.echo(f"{model} {v['version']}: no drift baseline (published without a conversion report)")
            continue
        t = Table(
            "cohort",
            "tensor",
            "kind",
            "devices",
            "rows",
            "mean",
            "baseline mean",
            "PSI",
            "KS",
            title=f"{model} {v['version']} by {doc['by']} (PSI > 0.2: shifted; scored from {doc['min_rows']} rows)",
        )
        for r in v["rows"]:
            t.add_row(
                r["cohort"],
                f"{r['io']} {r['tensor']}",
                r["kind"],
                str(r["devices"]),
                str(r["count"]),
                num(r["mean"], ".4g"),
                num(r["baseline_mean"], ".4g"),
                num(r["psi"]),
                num(r["ks"]),
            )
        stdout_console().print(t)


@devices_app.callback(invoke_without_command=True)
def devices(
    ctx: typer.Context,
    config: Path | None = ConfigOpt,
    selector: str = typer.Option("", "--selector", "-s", help="label=value[,label=value]"),
    as_json: bool = JsonOpt,
) -> None:
    """Known devices: id, labels, online, model version, state."""
    if ctx.invoked_subcommand is not None:
        return
    from fleet.devices import parse_selector

    rows = _client(config).get("/api/devices")
    sel = parse_selector(selector)
    rows = [d for d in rows if all(d["labels"].get(k) == v for k, v in sel.items())]
    if as_json:
        _print_json(rows)
        return
    from rich.table import Table

    from edgekit.log import stdout_console

    t = Table("device", "labels", "online", "model", "state", "last seen")
    for d in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items()))
        model = f"{d['active_model']} {d['active_version']}" if d["active_model"] else "-"
        t.add_row(
            d["id"],
            labels,
            "yes" if d["online"] else "no",
            model,
            (d["state"] or "-") + (f" ({d['reason']})" if d["reason"] else ""),
            f"{d['last_seen_s']}s",
        )
    stdout_console().print(t)


@devices_app.command("enroll")
def devices_enroll(
    device: str = typer.Argument(..., help="The device id (its MQTT username)."),
    out: Path | None = typer.Option(None, "--out", help="Bundle directory (default ./<device>-enrolment)."),
    broker_url: str | None = typer.Option(
        None,
        "--broker-url",
        help="mqtt(s)://host:port devices use (default: broker.public_url in fleet.toml).",
    ),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """New MQTT credentials for DEVICE and its enrolment bundle: root.json, password, broker URL
    (and CA with TLS). Point the agent at it with `enrolment = "DIR"` in agent.toml's agent
    section. Enrolling a device again issues a new password; the old one stops working."""
    from fleet.enrol import enrol_device

    done = enrol_device(_cfg(config), device, out or Path(f"{device}-enrolment"), broker_url)
    info = done.to_dict()
    if as_json:
        _print_json(info)
        return
    typer.echo(
        f"{'re-enrolled' if done.re_enrolled else 'enrolled'} {device}: bundle {info['dir']}"
        f" (broker {info['broker_url']}, root v{info['root_version']})"
    )
    if done.re_enrolled:
        typer.echo("  the previous password no longer works: give the device the new bundle")
    typer.echo(f'  on the device: [agent] enrolment = "{info["dir"]}" (keep mqtt.password 0600)')


@devices_app.command("revoke")
def devices_revoke(device: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Delete DEVICE's MQTT credentials: its next connection is refused."""
    from fleet.enrol import revoke_device
    from fleet.errors import NotFoundError

    if not revoke_device(_cfg(config), device):
        raise NotFoundError(f"device {device!r} has no credentials")
    _print_json({"device": device, "revoked": True}) if as_json else typer.echo(f"revoked {device}")


@fleet_app.command("mosquitto-config")
def mosquitto_config(
    out: Path = typer.Option(..., "--out", help="Directory for acl, passwd and edgekit.conf."),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Mosquitto's ACL and password file for the enrolled devices, and the settings to include
    (no anonymous clients, client id = username). Re-run after enrolling, then reload Mosquitto."""
    from fleet.mosquitto import write_config

    info = write_config(_cfg(config), out)
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"wrote {', '.join(info['files'])} to {info['dir']} ({info['devices']} device(s))")
        typer.echo(f"  add to mosquitto.conf: include_dir {info['dir']}  (or copy edgekit.conf's lines)")


@fleet_app.command("nats-config")
def nats_config(
    out: Path = typer.Option(..., "--out", help="Directory for node-*.conf and accounts.conf."),
    nodes: int = typer.Option(3, "--nodes", min=1, help="Cluster size (3 survives losing one node)."),
    hosts: str = typer.Option(
        "", "--hosts", help="host1,host2,... one per node; empty: all on 127.0.0.1, ports shifted"
    ),
    store_dir: Path = typer.Option(
        Path("/var/lib/nats"), "--store-dir", help="JetStream directory root (one subdir per node)."
    ),
    listen: str = typer.Option("", "--listen", help="Address the nodes bind, e.g. 0.0.0.0 (default: host)."),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """nats-server configs for a clustered broker: one per node (MQTT, JetStream, routes) and the
    accounts.conf they include (the fleet's users, permissions = the Mosquitto ACL). Set
    [broker] nats_dir to --out and enrolments rewrite accounts.conf; reload the nodes (SIGHUP)."""
    from fleet.nats import cluster_nodes, write_fleet_config

    host_list = [h.strip() for h in hosts.split(",") if h.strip()]
    info = write_fleet_config(
        _cfg(config), out, cluster_nodes(nodes, host_list), store_dir, listen_host=listen or None
    )
    if as_json:
        _print_json(info)
        return
    typer.echo(f"wrote {', '.join(info['files'])} to {info['dir']} ({info['devices']} device(s))")
    typer.echo("  start each node: nats-server -c node-<name>.conf; after an enrolment: kill -HUP <pid>")
    if info["skipped"]:
        typer.echo(f"  left out (enrolled without a bcrypt hash, enrol again): {', '.join(info['skipped'])}")


# ---- rollouts --------------------------------------------------------------------------------------
def rollout_table(st: dict[str, Any]) -> Any:
    """Per-wave counts of a rollout status (the admin API's JSON) as a rich Table."""
    from rich.table import Table

    from fleet.gates import parse_gate
    from fleet.rollouts import COUNT_KEYS

    keys = ("devices", *COUNT_KEYS)
    title = (
        f"[bold]{st['id']}[/] {st['model']} {st['version']}: [bold]{st['state']}[/]"
        + (f" ({st['reason']})" if st["reason"] else "")
        + f", wave {st['current_wave']}/{len(st['waves'])}"
    )
    gates = st.get("gates") or []
    if gates:
        title += f"\ngates {', '.join(gates)}, bake {st.get('bake', 0):g}s, on breach {st.get('on_breach')}"
    metrics = list(dict.fromkeys(parse_gate(g).metric for g in gates))  # in gate order
    shadow = ("shadowing", "promoted", "worst_agreement") if st.get("shadow") else ()
    if shadow:
        title += (
            f"\nshadow: promote when {' and '.join(st['promote'])} over {st['min_shadow_requests']} requests"
        )

    def gate_cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    t = Table("wave", "%", *keys, *metrics, *shadow, title=title)
    for w in st["waves"]:
        values = w.get("gates") or {}
        t.add_row(
            str(w["wave"]),
            f"{w['percent']:g}",
            *(str(w[k]) for k in keys),
            *(gate_cell(values.get(m)) for m in metrics),
            *(str(w[k]) if k != "worst_agreement" else gate_cell(w[k]) for k in shadow),
        )
    shadow_totals = [str(sum(w[k] for w in st["waves"])) for k in shadow[:2]] + ([""] if shadow else [])
    t.add_row("all", "", *(str(st["totals"][k]) for k in keys), *("" for _ in metrics), *shadow_totals)
    return t


def _print_rollout(st: dict[str, Any]) -> None:
    from edgekit.log import stdout_console

    stdout_console().print(rollout_table(st))


@rollout_app.command("start")
def rollout_start(
    model: str = typer.Argument(...),
    version: str = typer.Argument(...),
    selector: str = typer.Option(
        "", "--selector", "-s", help="label=value[,label=value]; empty = all devices"
    ),
    waves: str = typer.Option("5,25,100", help="Cumulative percentages of the selected devices."),
    success_threshold: float = typer.Option(0.95, help="Share of dispatched devices active to advance."),
    max_failure_rate: float = typer.Option(0.05, help="Share failed/timed out that aborts and rolls back."),
    device_timeout: str = typer.Option(
        "15m", help="A device silent this long counts as failed (30s, 15m, 1h)."
    ),
    devices_: str = typer.Option("", "--devices", help="Comma-separated device ids (with the selector)."),
    gate: list[str] = typer.Option(
        [],
        "--gate",
        help="Health gate on device metrics, repeatable: latency_p95_ratio<=1.2, error_rate<=0.01, "
        "fallback_rate<=0.05, smoke_failure_rate<=0.",
    ),
    bake: str = typer.Option("0s", help="Time a wave must stay within its gates before the next (10m)."),
    on_breach: str = typer.Option("abort", help="What a gate breach does: abort (and roll back) or pause."),
    shadow: bool = typer.Option(
        False,
        "--shadow",
        help="Install beside the active version and compare; promote per device by --promote.",
    ),
    promote: list[str] = typer.Option(
        [],
        "--promote",
        help="Shadow promotion rule, repeatable: top1_agreement>=0.98, cosine_mean>=0.99, max_abs<=0.1, "
        "latency_ratio<=1.2.",
    ),
    min_shadow_requests: int = typer.Option(
        200, help="Mirrored requests a device compares before it is judged."
    ),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Start a staged rollout of MODEL VERSION."""
    from fleet.devices import parse_selector
    from fleet.errors import FleetError
    from fleet.gates import ON_BREACH, parse_gates
    from fleet.rollouts import parse_duration
    from fleet.shadow import check as check_shadow
    from fleet.shadow import parse_rule

    try:
        wave_list = [float(w) for w in waves.split(",") if w.strip()]
        timeout = parse_duration(device_timeout)
        bake_s = parse_duration(bake)
    except ValueError as e:
        raise FleetError(f"invalid --waves, --device-timeout or --bake: {e}") from e
    gates = [str(g) for g in parse_gates(gate)]  # refused here, before anything starts
    if on_breach not in ON_BREACH:
        raise FleetError(f"--on-breach must be one of {', '.join(ON_BREACH)}")
    rule = [str(g) for g in parse_rule(promote)]
    if shadow:
        check_shadow(rule, min_shadow_requests)
    elif rule:
        raise FleetError("--promote needs --shadow")
    st = _client(config).post(
        "/api/rollouts",
        {
            "model": model,
            "version": version,
            "selector": parse_selector(selector),
            "waves": wave_list,
            "success_threshold": success_threshold,
            "max_failure_rate": max_failure_rate,
            "device_timeout": timeout,
            "devices": [d for d in devices_.split(",") if d] or None,
            "gates": gates,
            "bake": bake_s,
            "on_breach": on_breach,
            **(
                {"shadow": True, "promote": rule, "min_shadow_requests": min_shadow_requests}
                if shadow
                else {}
            ),
        },
    )
    if shadow and not st.get("shadow"):  # a server older than shadow rollouts ignores the fields
        raise FleetError(
            f"the server started rollout {st.get('id')} as a plain rollout (it predates shadow rollouts)",
            hint=f"abort it now: edgekit fleet rollout abort {st.get('id')}",
        )
    if gates and st.get("gates") != gates:  # a server older than health gates ignores them
        raise FleetError(
            f"the server started rollout {st.get('id')} without health gates (it predates them)",
            hint=f"abort it: edgekit fleet rollout abort {st.get('id')}",
        )
    _print_json(st) if as_json else _print_rollout(st)


@rollout_app.command("status")
def rollout_status(rollout_id: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Per-wave counts: pending, downloading, active, failed, timed out, rolled back."""
    st = _client(config).get(f"/api/rollouts/{rollout_id}")
    _print_json(st) if as_json else _print_rollout(st)


def _action(verb: str, rollout_id: str, config: Path | None, as_json: bool) -> None:
    st = _client(config).post(f"/api/rollouts/{rollout_id}/{verb}")
    _print_json(st) if as_json else _print_rollout(st)


@rollout_app.command("pause")
def rollout_pause(rollout_id: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Stop dispatching new waves (failures still abort)."""
    _action("pause", rollout_id, config, as_json)


@rollout_app.command("resume")
def rollout_resume(rollout_id: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Continue a paused rollout."""
    _action("resume", rollout_id, config, as_json)


@rollout_app.command("abort")
def rollout_abort(rollout_id: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Stop and roll every updated device back to its previous version."""
    _action("abort", rollout_id, config, as_json)


@rollout_app.command("cancel")
def rollout_cancel(rollout_id: str, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Stop dispatching without rolling back."""
    _action("cancel", rollout_id, config, as_json)


@rollout_app.command("list")
def rollout_list(config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Every rollout with its state."""
    rows = _client(config).get("/api/rollouts")
    if as_json:
        _print_json(rows)
        return
    for st in rows:
        t = st["totals"]
        typer.echo(
            f"{st['id']}  {st['model']} {st['version']}  {st['state']:<9}  active {t['active']}/"
            f"{t['devices']}  failed {t['failed'] + t['timed_out']}  {st['reason'] or ''}"
        )


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOpt) -> None:
    """Apply pending schema migrations (`fleet serve` also does, at start)."""
    from fleet import config as fc
    from fleet import migrations
    from fleet.db import open_database

    cfg = _cfg(config)
    db = open_database(cfg["server"]["db"], fc.state_dir(cfg))  # opening migrates
    try:
        typer.echo(f"database at revision {migrations.current(db.url)}")
    finally:
        db.close()


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Argument(..., help="What the token is for; creating a name again replaces its token."),
    config: Path | None = ConfigOpt,
) -> None:
    """Print a new admin token (shown once; only its sha256 is stored). Every replica accepts it."""
    from fleet import admin_tokens
    from fleet import config as fc
    from fleet.db import open_database

    cfg = _cfg(config)
    db = open_database(cfg["server"]["db"], fc.state_dir(cfg))
    try:
        typer.echo(admin_tokens.issue(db, name))
    finally:
        db.close()
