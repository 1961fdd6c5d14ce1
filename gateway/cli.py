"""The `dicom-gateway` command line (click)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import click

from gateway.config import Config, DicomDestination, load_config
from gateway.errors import ConfigError
from gateway.rules import RuleSet, load_configured

CONFIG_HELP = "configuration file (default ./config.yaml, or $GATEWAY_CONFIG)"


def _load(config: str | None) -> Config:
    try:
        return load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(2)


def _rules(cfg: Config) -> RuleSet:
    """The configured rules, or every problem (file, line, reason) and exit 2."""
    try:
        return load_configured(cfg)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(2)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


@click.group()
@click.version_option(package_name="dicom-gateway")
def main() -> None:
    """A durable DICOM routing gateway."""


@main.command()
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
def run(config: str | None) -> None:
    """Run everything: DIMSE listener(s), workers and the HTTP server."""
    from gateway.supervisor import run as run_supervisor

    cfg = _load(config)
    _rules(cfg)
    sys.exit(run_supervisor(cfg))


@main.command()
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
def check(config: str | None) -> None:
    """Validate the configuration and the rules; one line per problem, non-zero exit."""
    from gateway.config import warnings

    cfg = _load(config)
    rules = _rules(cfg)
    for w in warnings(cfg):
        click.echo(f"warning: {w}", err=True)
    click.echo(
        f"ok: {len(cfg.destinations)} destination(s), {len(rules.rules)} rule(s) "
        f"in {len(rules.files)} file(s)"
    )


@main.group()
def rules() -> None:
    """Routing rules: dry-run them against files."""


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
@click.option("--calling-ae", default="", help="as if sent by this AE title")
@click.option("--called-ae", default="", help="as if sent to this AE title")
@click.option("--source", default="", help="as if sent from this IP address")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def rules_test(
    paths: tuple[Path, ...],
    config: str | None,
    calling_ae: str,
    called_ae: str,
    source: str,
    as_json: bool,
) -> None:
    """Which rules fire for each FILE and why, the changes each would make, the transfer
    syntax it would produce and where it would go. Nothing is queued or sent."""
    from pydicom import dcmread

    from gateway.dryrun import dry_run, render
    from gateway.pipeline import action_env

    cfg = _load(config)
    ruleset = _rules(cfg)
    env = action_env(cfg)
    reports, failed = {}, False
    for path in paths:
        try:
            ds = dcmread(path, force=True)
            ds.SOPInstanceUID  # noqa: B018 - a file that is not DICOM fails here, clearly
        except Exception as exc:
            click.echo(f"{path}: not a readable DICOM file: {exc}", err=True)
            failed = True
            continue
        reports[str(path)] = dry_run(
            ruleset, ds, env, calling_ae=calling_ae, called_ae=called_ae, source=source
        )
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for name, report in reports.items():
            click.echo("\n".join(render(name, report)))
    sys.exit(1 if failed else 0)


@main.group(invoke_without_command=True)
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
@click.pass_context
def archive(ctx: click.Context, config: str | None) -> None:
    """The local archive: its index, protected studies, retention."""
    ctx.obj = _load(config)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _archive(cfg: Config, name: str | None) -> tuple[str, Path]:
    """(name, root folder) of the archive destination named, or of the one Q/R serves."""
    from gateway.config import ArchiveDestination

    name = name or cfg.qr_archive()
    spec = cfg.destinations.get(name or "")
    if name is None or not isinstance(spec, ArchiveDestination):
        click.echo(f"no archive destination {name or ''!r} in the configuration", err=True)
        sys.exit(2)
    return name, cfg.archive_dir(spec)


@archive.command()
@click.option("--destination", "-d", default=None, help="archive destination (default: Q/R's)")
@click.option("--path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="index this folder instead of the archive's own (files stay where they are)")  # fmt: skip
@click.pass_obj
def reindex(cfg: Config, destination: str | None, path: Path | None) -> None:
    """Rebuild the index from the files on disk (an existing folder of any layout)."""
    from gateway.archive.index import ArchiveIndex
    from gateway.archive.index import reindex as rebuild

    _, root = _archive(cfg, destination)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    index = ArchiveIndex(cfg.db_path, fsync=cfg.storage.fsync)
    try:
        n, problems = rebuild(path or root, index)
    finally:
        index.close()
    for line in problems:
        click.echo(line, err=True)
    click.echo(f"{n} instance(s) indexed from {path or root}; {len(problems)} file(s) skipped")


@archive.command()
@click.argument("study_uid")
@click.option("--reason", default="", help="kept with the protection")
@click.option("--remove", is_flag=True, help="lift the protection instead")
@click.pass_obj
def protect(cfg: Config, study_uid: str, reason: str, remove: bool) -> None:
    """Keep a study whatever the retention policy says (or, with --remove, stop keeping it)."""
    from gateway.archive import retention
    from gateway.archive.index import ArchiveIndex

    index = ArchiveIndex(cfg.db_path, fsync=cfg.storage.fsync)
    try:
        if remove:
            ok = retention.unprotect(index, study_uid)
            click.echo(f"{study_uid}: {'no longer protected' if ok else 'was not protected'}")
        else:
            retention.protect(index, study_uid, reason)
            click.echo(f"{study_uid}: protected")
    finally:
        index.close()


@archive.command("retention")
@click.option("--destination", "-d", default=None, help="archive destination (default: Q/R's)")
@click.pass_obj
def retention_now(cfg: Config, destination: str | None) -> None:
    """Apply the archive's retention policy now (the gateway also does every minute)."""
    from gateway.archive.index import ArchiveIndex
    from gateway.archive.retention import apply_retention

    name, root = _archive(cfg, destination)
    policy = cfg.destinations[name].retention  # type: ignore[union-attr]
    if not policy.active:
        click.echo(f"archive {name!r} has no retention limit set")
        return
    index = ArchiveIndex(cfg.db_path, fsync=cfg.storage.fsync)
    try:
        report = apply_retention(index, policy, root)
    finally:
        index.close()
    click.echo(
        f"deleted {sum(report.deleted.values())} instance(s) {dict(report.deleted)}, freed "
        f"{report.freed_bytes} bytes; kept {report.kept_undelivered} undelivered and "
        f"{report.kept_protected} protected"
    )
    for line in report.problems:
        click.echo(line, err=True)


@main.group()
def deid() -> None:
    """De-identification: authorised re-identification of pseudonyms."""


@deid.command()
@click.argument("pseudonym")
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
def reidentify(pseudonym: str, config: str | None) -> None:
    """The original Patient ID and Patient's Name behind a pseudonymous Patient ID.
    Needs the configured secret and read access to data_dir/pseudonyms.db."""
    from gateway.pipeline import action_env
    from gateway.pseudonyms import PseudonymStore

    env = action_env(_load(config))
    if env.secret is None or env.pseudonym_db is None or not env.pseudonym_db.exists():
        click.echo(
            "no pseudonym store (deidentify.secret unset, or nothing de-identified)", err=True
        )
        sys.exit(1)
    try:
        store = PseudonymStore(env.pseudonym_db, env.secret)
    except ValueError as exc:
        click.echo(f"{env.pseudonym_db}: {exc}", err=True)
        sys.exit(1)
    found = store.lookup(pseudonym)
    store.close()
    if found is None:
        click.echo(f"{pseudonym}: not a pseudonym this gateway made", err=True)
        sys.exit(1)
    click.echo(f"PatientID={found[0]}\tPatientName={found[1]}")


@main.command()
@click.argument("address")
@click.option("--aet", default="ECHOSCU", show_default=True, help="our (calling) AE title")
@click.option("--aec", default="GATEWAY", show_default=True, help="their (called) AE title")
@click.option("--timeout", default=10.0, show_default=True)
def echo(address: str, aet: str, aec: str, timeout: float) -> None:
    """C-ECHO HOST:PORT."""
    from gateway.requestor import AssociationFailed, Lost, NoContext, StoreRequestor

    host, port = _host_port(address)
    t0 = time.perf_counter()
    try:
        assoc = StoreRequestor.open(
            (host, port), aec, aet, [], connect_timeout=timeout, dimse_timeout=timeout
        )
    except AssociationFailed as exc:
        click.echo(f"echo {aec}@{host}:{port}: association failed: {exc}", err=True)
        sys.exit(1)
    try:
        status = assoc.echo()
    except (Lost, NoContext) as exc:
        assoc.abort()
        click.echo(f"echo {aec}@{host}:{port}: failed: {exc}", err=True)
        sys.exit(1)
    assoc.release()
    ms = (time.perf_counter() - t0) * 1000
    if status == 0:
        click.echo(f"echo {aec}@{host}:{port}: success in {ms:.1f} ms")
        return
    click.echo(f"echo {aec}@{host}:{port}: failed (0x{status:04X})", err=True)
    sys.exit(1)


@main.command()
@click.argument("address")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--aet", default="STORESCU", show_default=True, help="our (calling) AE title")
@click.option("--aec", default="GATEWAY", show_default=True, help="their (called) AE title")
@click.option("--batch", default=100, show_default=True, help="instances per association")
@click.option("--timeout", default=60.0, show_default=True)
def send(address: str, paths: tuple[Path, ...], aet: str, aec: str, batch: int, timeout: float):
    """C-STORE files and folders (recursively) to HOST:PORT."""
    from gateway.destinations.dicom import DicomStore
    from gateway.dimse import file_identity
    from gateway.queue import Job

    host, port = _host_port(address)
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    files = [p for p in files if p.is_file()]
    store = DicomStore(
        "send",
        DicomDestination(type="dicom", ae_title=aec, host=host, port=port, dimse_timeout=timeout),
        calling_ae=aet,
    )
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    jobs: list[Job] = []
    for i, f in enumerate(files):
        try:
            sop_class, sop_uid, ts = file_identity(f)
        except Exception as exc:
            outcomes["not DICOM / unreadable"] += 1
            failures.append(f"{f}: not sent: {exc}")
            continue
        jobs.append(Job(i, i, "send", "", 0, 0.0, str(f), sop_uid, sop_class, ts, "", "", 0.0))
    with click.progressbar(length=len(jobs), label=f"C-STORE to {aec}@{host}:{port}") as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            results = store.send(chunk)
            for job in chunk:
                err = results.get(job.id)
                if err is None:
                    outcomes["success"] += 1
                else:
                    outcomes[str(err)] += 1
                    failures.append(f"{job.path}: {err}")
            bar.update(len(chunk))
    for line in failures:
        click.echo(line, err=True)
    click.echo(", ".join(f"{n} {what}" for what, n in outcomes.most_common()) or "nothing to send")
    sys.exit(0 if not failures else 1)


@main.group(invoke_without_command=True)
@click.option("-c", "--config", "config", default=None, help=CONFIG_HELP)
@click.pass_context
def queue(ctx: click.Context, config: str | None) -> None:
    """Per-destination queue state; dead letters: list, retry, purge."""
    ctx.obj = _load(config)
    if ctx.invoked_subcommand is None:
        ctx.invoke(status)


def _queue(cfg: Config):
    from gateway.queue import Queue

    if not cfg.db_path.exists():
        click.echo(f"no queue database at {cfg.db_path} (has the gateway run yet?)", err=True)
        sys.exit(1)
    return Queue(cfg.db_path)


@queue.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def status(cfg: Config, as_json: bool) -> None:
    """Jobs per destination and state, with the oldest waiting instance's age."""
    q = _queue(cfg)
    rows, inst = q.destination_stats(), q.instance_stats()
    if as_json:
        click.echo(json.dumps({"destinations": rows, "instances": inst}, indent=2))
        return
    now = time.time()
    click.echo(f"{'destination':<20} {'state':<10} {'count':>8} {'oldest':>10}")
    for r in rows:
        age = _age(now - r["oldest_received_at"])
        click.echo(f"{r['destination']:<20} {r['state']:<10} {r['count']:>8} {age:>10}")
    click.echo("instances: " + (", ".join(f"{n} {s}" for s, n in sorted(inst.items())) or "none"))


@queue.command()
@click.option("--destination", "-d", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def dead(cfg: Config, destination: str | None, as_json: bool) -> None:
    """List dead letters with their last error."""
    rows = _queue(cfg).dead_letters(destination)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['job']:>8} {r['destination']:<16} {r['sop_instance_uid']} "
            f"attempts={r['attempts']} error={r['last_error']}"
        )
    click.echo(f"{len(rows)} dead letter(s)")


@queue.command()
@click.option("--destination", "-d", default=None)
@click.pass_obj
def retry(cfg: Config, destination: str | None) -> None:
    """Send dead letters again, now, with a fresh set of attempts and the current rules'
    actions (so a rule fixed after its actions failed is what runs)."""
    current = {r.name: r.actions for r in _rules(cfg).rules}  # rejected rules: exit 2
    n = _queue(cfg).retry_dead(destination, current)
    click.echo(f"{n} dead letter(s) queued again")


@queue.command()
@click.option("--destination", "-d", default=None)
@click.option("--unmatched", is_flag=True, help="also drop instances that matched no rule")
@click.option("--yes", is_flag=True, help="do not ask")
@click.pass_obj
def purge(cfg: Config, destination: str | None, unmatched: bool, yes: bool) -> None:
    """Drop dead letters (and optionally unmatched instances) for good."""
    if not yes:
        click.confirm("Drop these instances for good?", abort=True)
    q = _queue(cfg)
    n, paths = q.purge_dead(destination)
    if unmatched:
        extra = q.purge_unmatched()
        paths += extra
        click.echo(f"{len(extra)} unmatched instance(s) dropped")
    for p in paths:
        Path(p).unlink(missing_ok=True)
    click.echo(f"{n} dead letter(s) purged; {len(paths)} spool file(s) removed")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
