"""Experiments on remote storage (s3://, gs://, ... any URI pyarrow resolves).

Ray writes trials and checkpoints straight to the URI from every node. mmtune's own files (metadata,
durable trial records, exports, reports) are written to a local mirror of the experiment and uploaded
as they change, so the rest of mmtune reads and writes plain local files.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from mmtune.data.io import atomic_file
from mmtune.tune.errors import SweepError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def is_remote(location: str) -> bool:
    """Whether LOCATION is a URI other than file:// (those are local paths)."""
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class Location:
    """Where an experiment lives: its local folder (the mirror, when remote) and its URI, if remote."""

    local: Path
    remote: str | None = None

    @property
    def name(self) -> str:
        return self.local.name

    @property
    def ray_storage(self) -> str:
        """Ray's storage_path: the folder (or URI) holding the experiment."""
        return self.remote.rsplit("/", 1)[0] if self.remote else str(self.local.parent)

    def __str__(self) -> str:
        return self.remote or str(self.local)


def mirror_root() -> Path:
    """Where local mirrors of remote experiments live ($MMTUNE_CACHE, else ~/.cache/mmtune/remote)."""
    base = os.environ.get("MMTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "mmtune"
    return Path(base).expanduser().resolve() / "remote"


def locate(location: str, name: str | None = None) -> Location:
    """The Location of experiment NAME under LOCATION, or of the experiment LOCATION itself."""
    location = location.rstrip("/") + (f"/{name}" if name else "")
    if not is_remote(location):
        return Location(Path(location.removeprefix("file://")).expanduser().resolve())
    u = urlsplit(location)
    if u.query or "@" in u.netloc:
        raise SweepError(f"{location}: put credentials and endpoints in the environment (e.g. "
                         "AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL), not in the URI, which is written to logs and files")
    if not u.netloc or ".." in u.path.split("/"):
        raise SweepError(f"{location}: expected <scheme>://<bucket>/<path> without '..'")
    return Location(mirror_root() / u.scheme / u.netloc / u.path.strip("/"), f"{u.scheme}://{u.netloc}{u.path}")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of URI and the path on it; a clear error when pyarrow cannot resolve it."""
    import pyarrow.fs as pafs  # late: its import costs ~0.1 s, and only remote storage needs it

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise SweepError(f"{uri}: cannot open this storage URI ({e}). Supported: a local path, file://, and the "
                         "URIs of pyarrow's filesystems (s3://, gs://, abfs://, hdfs://)") from None


def check_writable(uri: str) -> None:
    """Write and delete a probe file under URI, so bad credentials or a missing bucket fail before Ray starts."""
    try:
        fs, path = filesystem(uri)
    except SweepError as e:
        raise SweepError(f"--storage {e}") from None
    probe = f"{path}/.mmtune-probe"
    try:
        fs.create_dir(path)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except OSError as e:
        raise SweepError(f"--storage {uri}: cannot write there ({e}). Check the bucket exists and the "
                         "credentials in the environment allow writing") from None


def exists(loc: Location, rel: str = "") -> bool:
    """Whether the experiment (or the file REL in it) exists where it is stored."""
    if not loc.remote:
        return (loc.local / rel).exists()
    import pyarrow.fs as pafs

    fs, path = filesystem(loc.remote)
    return fs.get_file_info(f"{path}/{rel}".rstrip("/")).type != pafs.FileType.NotFound


def read_text(location: str, rel: str) -> str | None:
    """The text of REL under the experiment LOCATION (a local path or URI), or None when absent."""
    if not is_remote(location):
        p = Path(location) / rel
        return p.read_text() if p.is_file() else None
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(f"{path}/{rel}") as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def push(loc: Location, rel: str) -> None:
    """Upload the mirror's file or folder REL to the remote experiment (no-op for local experiments)."""
    if not loc.remote:
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(loc.remote)
    src = loc.local / rel
    if src.is_dir():
        pafs.copy_files(str(src), f"{path}/{rel}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    else:
        fs.create_dir(f"{path}/{rel}".rsplit("/", 1)[0])
        with src.open("rb") as f, fs.open_output_stream(f"{path}/{rel}") as out:
            out.write(f.read())


def pull(loc: Location, rel: str = "", checkpoints: bool = True) -> int:
    """Download the remote experiment's REL (default: all of it) into the mirror; returns files fetched.

    Files the mirror already holds, as large and newer than the remote copy, are not fetched again;
    without CHECKPOINTS, trial checkpoints (the bulk of an experiment) are not fetched at all.
    """
    if not loc.remote:
        return 0
    import pyarrow.fs as pafs

    fs, path = filesystem(loc.remote)
    root = f"{path}/{rel}".rstrip("/")
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    fetched = 0
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        dst = loc.local / info.path[len(path) + 1:]
        if info.type != pafs.FileType.File or _current(dst, info) or (not checkpoints and "/checkpoint_" in info.path):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f, atomic_file(dst, "wb") as out:
            out.write(f.read())
        fetched += 1
    log.info("pulled %d file(s) of %s into %s", fetched, loc.remote, loc.local)
    return fetched


def _current(dst: Path, info: pafs.FileInfo) -> bool:
    if not dst.is_file() or dst.stat().st_size != info.size:
        return False
    return info.mtime is None or dst.stat().st_mtime >= info.mtime.timestamp()


def delete(loc: Location, rel: str = "", keep: tuple[str, ...] = ()) -> None:
    """Delete REL of the remote experiment (its whole contents but KEEP when REL is empty)."""
    if not loc.remote:
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(loc.remote)
    target = f"{path}/{rel}".rstrip("/")
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(target)):
        if info.base_name in keep:
            continue
        fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)
    if not keep:
        fs.delete_dir(target)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


def fetched(location: str | Path, checkpoints: bool = True) -> Location:
    """The experiment LOCATION with its files local: a remote one is pulled first (trial checkpoints only with
    CHECKPOINTS); a SweepError when there is none."""
    loc = locate(str(location))
    if loc.remote:
        if not exists(loc):
            raise SweepError(f"{loc.remote}: no experiment there")
        pull(loc, checkpoints=checkpoints)
    return loc


@contextlib.contextmanager
def synced(location: str | Path, checkpoints: bool = True) -> Iterator[Path]:
    """The local folder of the experiment LOCATION; for a remote one, pulled first (trial checkpoints only
    with CHECKPOINTS) and changes pushed after."""
    with pushing(fetched(location, checkpoints)) as folder:
        yield folder


@contextlib.contextmanager
def pushing(loc: Location) -> Iterator[Path]:
    """LOC's local folder; for a remote experiment, the files changed in the block are uploaded after it."""
    before = _snapshot(loc.local) if loc.remote else {}
    yield loc.local
    if loc.remote:
        changed = [rel for rel, sig in _snapshot(loc.local).items() if before.get(rel) != sig]
        for rel in changed:
            push(loc, rel)
        log.info("pushed %d changed file(s) to %s", len(changed), loc.remote)
