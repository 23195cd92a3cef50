"""`pacsguard deid ...`: de-identify files and folders (PS3.15 Annex E), explain what would be
done to one file, make a key, open the sealed originals of a route's records. The work is
pacsguard.deid's; this module only parses and prints.

The settings are the ``deid:`` section of pacsguard.yaml (the same a route's ``deidentify`` check
uses): key file or variable, options, safe private list, pixel checks. ``--option`` and
``--key-file`` on the command line take the place of the section's options and key."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pacsguard.cli.app import App, Group
from pacsguard.cli.common import CONFIG_OPTION, shown

if TYPE_CHECKING:
    from pacsguard.deid.config import DeidConfig
    from pacsguard.deid.keys import DeidKey

KEY_HELP = "The key (pacsguard deid keygen); else deid.key_file, else $PACSGUARD_DEID_KEY (deid.key_env)."
OPTION_HELP = "A PS3.15 E.3 option (repeatable): " + ", ".join(
    ["clean-pixel-data", "clean-recognizable-visual-features", "clean-graphics", "clean-structured-content",
     "clean-descriptors", "retain-longitudinal-full-dates", "retain-longitudinal-modified-dates",
     "retain-patient-characteristics", "retain-device-identity", "retain-institution-identity",
     "retain-uids", "retain-safe-private"]) + "."


class _RunByDefault(Group):
    """`pacsguard deid IN...` means `pacsguard deid run IN...`: arguments that name no command are
    inputs."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        parsed: list[str] = super().parse_args(ctx, args)
        return parsed


app = App(name="deid", help="De-identify DICOM files (PS3.15 Annex E) with keyed pseudonyms. "
          "`pacsguard deid IN... --out DIR` is short for `pacsguard deid run IN... --out DIR`.",
          no_args_is_help=True, cls=_RunByDefault)


def _fail(message: str) -> typer.Exit:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(2)


def _options(names: list[str] | None) -> list[Any]:
    from pacsguard.deid.profile import Option

    try:
        chosen = [Option(n) for n in names or []]
    except ValueError as exc:
        raise _fail(f"{exc}; {OPTION_HELP}") from None
    return chosen


def _settings(config_file: Path | None, option: list[str] | None) -> tuple[DeidConfig, Path | None, int]:
    """The ``deid:`` section of the configuration (defaults when there is no ./pacsguard.yaml and
    none was named), with ``--option`` replacing its options when given; the folder its
    relative paths are relative to; and how far a deflated data set may inflate (the scan's
    scan.limits.max_inflated, the limit `pacsguard scan` calls a deflate bomb at)."""
    from pydantic import ValidationError

    from pacsguard.cli.common import load
    from pacsguard.config.loader import ConfigError
    from pacsguard.deid.config import DeidConfig
    from pacsguard.deid.files import MAX_INFLATED

    try:
        loaded = load(config_file, required=config_file is not None)
    except ConfigError as exc:
        raise _fail("; ".join(f"{exc.source}: {p}" for p in exc.problems)) from None
    section: DeidConfig = loaded.section("deid")
    if option:
        try:
            section = DeidConfig.model_validate({**section.model_dump(), "options": _options(option)})
        except ValidationError as exc:  # one line naming --option, not pydantic's report
            raise _fail("--option: " + "; ".join(_reason(e) for e in exc.errors())) from None
    scan = getattr(loaded.config, "scan", None)
    max_inflated = scan.limits.max_inflated if scan is not None else MAX_INFLATED
    return section, (loaded.path.parent if loaded.path is not None else None), max_inflated


def _reason(error: Any) -> str:
    """The words of one pydantic error: the validator's own message, without "Value error, "."""
    inner = (error.get("ctx") or {}).get("error")
    return str(inner) if inner is not None else str(error.get("msg", ""))


def _key(key_file: Path | None, section: DeidConfig, base: Path | None) -> DeidKey:
    """--key-file, else the section's key_file (relative to pacsguard.yaml), else its key_env."""
    from pacsguard.deid.keys import KeyProblem, load_key

    named = "--key-file" if key_file is not None else "deid.key_file"
    if key_file is None and section.key_file is not None:
        key_file = section.key_file if base is None or section.key_file.is_absolute() else base / section.key_file
    try:
        key = load_key(key_file, section.key_env)
    except KeyProblem as exc:
        # A file's problem names the option (or setting) that named the file.
        raise _fail(f"{named} {exc}" if key_file is not None else str(exc)) from None
    if key_file is not None:
        _warn_if_shared(key_file)
    return key


def _warn_if_shared(key_file: Path) -> None:
    """Say so when others than the owner may read the key (keygen writes it 0600): whoever reads
    it can confirm a guessed identity behind any pseudonym and open the sealed Events. A warning,
    not a refusal: the run itself leaks nothing, and the owner may have reasons (a group of
    operators sharing it)."""
    import stat

    from rich.console import Console
    from rich.text import Text

    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError:
        return  # it was just read; a file gone since then is not this warning's business
    if mode & 0o077:
        Console(stderr=True, soft_wrap=True).print(Text(
            f"warning: {key_file} can be read by others than its owner (mode {mode:04o}): whoever reads "
            f"it can link pseudonyms to patients; chmod 600 {key_file}", style="yellow"))


def _inputs(paths: list[Path], out: Path, manifest: Path) -> list[Path]:
    """The files to de-identify: those named, and every file in the folders named, except what a
    run writes. When --out lies inside an input folder (`deid run . --out anon`), the files of an
    earlier run are there: taken as inputs, they were de-identified again into copies under
    unrelated UIDs beside the first ones, and the manifest was withheld as not DICOM. An --out that
    is itself an input folder would put the outputs among the originals: refused."""
    outputs, written = out.resolve(), manifest.resolve()
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            if path.resolve() == outputs:
                raise _fail(f"{path}: the folder --out writes to is also an input; the de-identified "
                            f"files would sit among the originals: give --out another folder")
            files.extend(sorted(p for p in _folder_files(path) if not _written(p, outputs, written)))
        elif path.is_file():
            files.append(path)
        else:
            raise _fail(f"{path}: no such file or folder")
    return files


def _folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, through links to folders too (an export whose series are
    links to where the PACS keeps them), each real folder once (a link back up is no loop). A
    link to nothing is listed, so the run withholds it by name: before, Path.rglob skipped both a
    linked folder and a broken link without a word, and the run reported success for an export
    whose linked series were never de-identified. FIFOs, sockets and devices are no files (reading
    a FIFO would wait forever)."""
    import os

    found: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in names:
            entry = Path(root, name)
            if entry.is_file() or (entry.is_symlink() and not entry.exists()):
                found.append(entry)
    return found


def _manifest_path(out: Path, manifest: Path | None) -> Path:
    """Where the manifest goes: ``--manifest``, else ``OUT.manifest.json`` beside OUT. Never inside
    OUT: the manifest pairs each input path (a PACS export's ``DOE^JOHN/`` folder, a file named
    after the Patient ID) with the output it became, the very link de-identification removes
    (PS3.15 E.1), so OUT as written must be fit to send as it is."""
    if manifest is None:
        # ".", ".." and "anon/.." name no folder by themselves: the name beside is the real one's.
        named = out if out.name not in ("", ".", "..") else out.resolve()
        if not named.name:
            raise _fail(f"--out {out}: the root folder has nothing beside it for the manifest; give "
                        f"--out a folder under it")
        return named.with_name(f"{named.name}.manifest.json")
    outputs, resolved = out.resolve(), manifest.resolve()
    if resolved.is_relative_to(outputs):
        raise _fail(f"--manifest {manifest}: it lies inside --out {out}, which must be fit to send "
                    f"as it is, and the manifest links every input path (often the patient's name "
                    f"or ID) to its output; give --manifest a file outside {out}")
    return manifest


def _check_manifest(manifest: Path, files: list[Path], given: bool) -> None:
    """Refuse, before anything is written, a manifest that cannot be written or would replace a
    file that is not an earlier run's manifest: `--manifest ct.dcm` used to overwrite the original
    the run had just read, after all the work. The default's folder is OUT's parent, which the run
    makes with OUT (``given``: False)."""
    from pacsguard.deid.manifest import is_manifest

    resolved = manifest.resolve()
    if any(f.resolve() == resolved for f in files):
        raise _fail(f"--manifest {manifest}: it is one of the inputs; give --manifest a new file")
    if manifest.is_dir():
        raise _fail(f"--manifest {manifest}: it is a folder; give --manifest a file (.json or .csv)")
    if given and not manifest.parent.is_dir():
        raise _fail(f"--manifest {manifest}: no folder {manifest.parent} to write it in")
    # Only a regular file is read to tell: /dev/null is a fair way to want no manifest, and a FIFO
    # would block the check.
    if manifest.is_file() and not is_manifest(manifest):
        raise _fail(f"--manifest {manifest}: the file exists and is not the manifest of an earlier "
                    f"run; move it away or give --manifest another file")


def _warn_if_old_manifest(out: Path) -> None:
    """Name the OUT/manifest.json an earlier version wrote by default: this run leaves it where it
    is (it is not this run's to delete), and with it OUT is not fit to send."""
    from rich.console import Console
    from rich.text import Text

    from pacsguard.deid.manifest import is_manifest

    old = out / "manifest.json"
    if old.is_file() and is_manifest(old):
        Console(stderr=True, soft_wrap=True).print(Text(
            f"warning: {old} is an earlier run's manifest, which links input paths to outputs: move it "
            f"out of {out} before {out} leaves the hospital", style="yellow"))


def _written(path: Path, outputs: Path, manifest: Path) -> bool:
    """True for a file a run writes: anything under the --out folder, and the manifest."""
    resolved = path.resolve()
    return resolved == manifest or resolved.is_relative_to(outputs)


def _check_out(out: Path) -> None:
    """Make the --out folder and make sure a file can be created in it, before any input is read:
    a folder that cannot be written was found only after the whole run, every file withheld on its
    .part file. Each refusal names --out, the path and the reason in words."""
    import errno
    import os
    import tempfile

    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out}: is a file, not a folder; give --out a folder (it is made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file on the way: `--out one.dcm/anon`
        raise _fail(f"--out {out}: cannot create the folder (a file is in the way on its path)") from None
    except OSError as exc:
        why = "a file is in the way on its path" if exc.errno == errno.ENOTDIR else exc.strerror or str(exc)
        raise _fail(f"--out {out}: cannot create the folder ({why})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".pacsguard-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _fail(f"--out {out}: cannot write in the folder ({exc.strerror or exc})") from None


def _one(job: tuple[bytes, list[str], Any, str, str, int]) -> Any:
    """One file in a worker process: the engine is rebuilt there from the key and the settings."""
    from pacsguard.deid.build import make_engine
    from pacsguard.deid.files import deidentify_file
    from pacsguard.deid.keys import DeidKey
    from pacsguard.deid.profile import Option

    secret, options, config, source, out, max_inflated = job
    engine = make_engine(DeidKey(secret), [Option(o) for o in options], config)
    return deidentify_file(engine, Path(source), Path(out), into_folder=True, max_inflated=max_inflated)


@app.command("run")
def run_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files and folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the de-identified files.")],
    profile: Annotated[str, typer.Option("--profile", help="The PS3.15 profile: basic.")] = "basic",
    option: Annotated[Optional[list[str]], typer.Option("--option", help=OPTION_HELP)] = None,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help=KEY_HELP)] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Worker processes.")] = 1,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Manifest file, .json or .csv, outside OUT: it links input paths to outputs "
        "[default: OUT.manifest.json beside OUT].")] = None,
    config_file: Optional[Path] = CONFIG_OPTION,
) -> None:
    """De-identify files with the deid: settings of pacsguard.yaml; exit 1 if any file was
    withheld (not safely de-identifiable, or its output name already taken by another object)."""
    from rich.console import Console
    from rich.progress import Progress

    from pacsguard.deid.manifest import record, write_manifest
    from pacsguard.deid.profile import table

    if profile != "basic":
        raise _fail(f"unknown profile {profile!r}: the profile is basic, with options")
    config, base, max_inflated = _settings(config_file, option)
    key = _key(key_file, config, base)
    given = manifest is not None
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out}: is a file, not a folder; give --out a folder (it is made if missing)")
    manifest = _manifest_path(out, manifest)
    files = _inputs(inputs, out, manifest)
    _check_manifest(manifest, files, given)
    _warn_if_old_manifest(out)
    _check_out(out)
    names = [o.value for o in config.options]
    jobs_list = [(key.secret, names, config, str(f), str(out), max_inflated) for f in files]
    records = []
    withheld = 0
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("de-identifying", total=len(files))
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                results = pool.map(_one, jobs_list, chunksize=8)
                for result in results:
                    records.append(record(result, key.fingerprint, table().edition, names))
                    withheld += result.output is None
                    progress.advance(task)
        else:
            for job in jobs_list:
                result = _one(job)
                records.append(record(result, key.fingerprint, table().edition, names))
                withheld += result.output is None
                progress.advance(task)
    for r in records:  # first: a manifest that cannot be written must not hide why a file failed
        if r["status"] == "withheld":
            console.print(f"withheld {shown(r['source'])}: {shown(r['reason'])}", style="yellow", soft_wrap=True)
    try:
        write_manifest(manifest, records)
    except OSError as exc:
        raise _fail(f"--manifest {manifest}: cannot write it ({exc.strerror or exc}); the "
                    f"{len(files) - withheld} de-identified file(s) are in {out}") from None
    console.print(f"{len(files) - withheld} written, {withheld} withheld; key {key.fingerprint}; "
                  f"manifest {shown(str(manifest))}", soft_wrap=True)
    if withheld:
        raise typer.Exit(1)


@app.command("explain")
def explain_cmd(
    file: Annotated[Path, typer.Argument(help="One DICOM file.")],
    option: Annotated[Optional[list[str]], typer.Option("--option", help=OPTION_HELP)] = None,
    config_file: Optional[Path] = CONFIG_OPTION,
) -> None:
    """What the profile would do to each attribute and why, with the deid: settings of
    pacsguard.yaml; writes nothing."""
    from rich.table import Table as RichTable

    from pacsguard.deid.build import make_engine
    from pacsguard.deid.engine import Withheld
    from pacsguard.deid.explain import explain
    from pacsguard.deid.files import read_whole
    from pacsguard.deid.keys import DeidKey

    config, _, max_inflated = _settings(config_file, option)
    try:
        ds = read_whole(file, max_inflated)
    except Withheld as exc:
        raise _fail(f"{file}: {exc}") from None
    # The what-if needs no key: replacement values are not shown, only what happens.
    try:
        engine = make_engine(DeidKey(bytes(32)), config.options, config)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    result = explain(engine, ds)
    from pacsguard.cli.common import new_console

    console = new_console(soft_wrap=True)  # piped into `head`: exit 141, as every command
    grid = RichTable("attribute", "name", "VR", "action", "effect", "decided by", box=None)
    for c in result.changes:
        grid.add_row(shown(c.path), shown(c.name), c.vr, c.code, c.effect.value, shown(c.source))
    console.print(grid)
    console.print(f"pixels: {result.pixels}")
    if result.withheld:
        console.print(f"the file would be withheld: {shown(result.withheld)}", style="yellow")


@app.command("keygen")
def keygen_cmd(
    path: Annotated[Path, typer.Argument(help="Key file to create (mode 0600; never overwritten).")],
) -> None:
    """Make a new de-identification key; prints its fingerprint, never the key."""
    from pacsguard.deid.keys import KeyProblem, generate_key

    try:
        generate_key(path, announce=lambda key: _announce(f"{path}: key {key.fingerprint}"))
    except KeyProblem as exc:
        raise _fail(str(exc)) from None


def _announce(line: str) -> None:
    """Print ``line`` on standard output now, flushed: keygen keeps its key only once this worked.
    An output that cannot be written (`> /dev/full`, a reader gone away) is an OSError naming it;
    stdout then points at /dev/null, so Python's own flush at exit does not fail a second time."""
    import errno
    import os
    import sys

    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except UnicodeError:  # a PATH the output's encoding cannot spell
        raise OSError(errno.EILSEQ, "cannot write its fingerprint to standard output (a character of the "
                      "path its encoding cannot show)") from None
    except OSError as exc:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout replaced or closed: nothing to flush at exit
            pass
        raise OSError(exc.errno, f"cannot write its fingerprint to standard output ({exc.strerror})") from None


@app.command("reidentify")
def reidentify_cmd(
    events: Annotated[str, typer.Argument(help=(
        "deid.object.deidentified events as JSON lines, as `pacsguard events search --kind "
        "deid.object.deidentified --format json` prints them; - reads standard input."))],
    find: Annotated[Optional[str], typer.Option(
        "--find", help="Only the objects one of whose identifiers (new or original UID, Patient ID) is this.")] = None,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help=KEY_HELP)] = None,
    config_file: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Open, with the key, the original identifiers a deidentify route sealed in its records:
    one JSON line per object (time, route, new, original). Exit 1 if a record under this key
    does not open (altered); exit 3 if --find matched no record that opened."""
    import json
    import sys

    from rich.console import Console

    from pacsguard.deid.keys import KeyProblem
    from pacsguard.deid.object_check import DEIDENTIFIED, open_link

    config, base, _ = _settings(config_file, None)
    key = _key(key_file, config, base)
    if events == "-" and sys.stdin is None:  # `<&-`: Python leaves no stdin to read
        raise _fail("-: standard input is closed; pipe the events into it or name their file")
    try:
        text = sys.stdin.read() if events == "-" else Path(events).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a DICOM file or an archive given by mistake
        raise _fail(f"{events}: not JSON lines (not UTF-8 text at byte {exc.start})") from None
    except OSError as exc:
        raise _fail(f"{events}: {exc}") from None
    console = Console(stderr=True, soft_wrap=True)
    other_key = broken = shown_count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            event = json.loads(line) if line.strip() else None
        except ValueError:
            raise _fail(f"{events}:{number}: not a JSON event") from None
        if not isinstance(event, dict) or event.get("kind") != DEIDENTIFIED:
            continue
        details = event.get("details") or {}
        if details.get("key_fingerprint") != key.fingerprint:
            other_key += 1
            continue
        try:
            original, new = open_link(key, details)
        except KeyProblem as exc:
            broken += 1
            console.print(f"{events}:{number}: {shown(exc)}", style="yellow")
            continue
        if find is not None and find not in (*new.values(), *original.values()):
            continue
        typer.echo(json.dumps({"time": event.get("time"), "route": details.get("route"), "new": new,
                               "original": original}, sort_keys=True))
        shown_count += 1
    if other_key:
        console.print(f"{other_key} record(s) sealed under another key were skipped")
    if broken:
        raise typer.Exit(1)
    if find is not None and not shown_count:
        # An empty answer must not pass for "no such object": the export may have stopped at
        # `events search --limit`, or cover another time or key.
        console.print(f"no record under this key matches {find}; if {events} is an `events search` "
                      "export, check that it was not cut at --limit", style="yellow")
        raise typer.Exit(3)
