"""Raw source files in the lake, for jobs that run in pods: a pod cannot open a path on the machine that started it.

`stage` copies local files to `<lake>/raw/<name>/<digest>/`, where the digest is the SHA-256 of the files'
names and contents: the same files always land in the same place (a rerun copies nothing), and different files
never overwrite ones a running job is reading. `fetch` copies such a prefix back to a local directory, for drivers
whose checks read files with Python (validation, hashes) before Spark reads the same objects; `read_bytes` reads
one file, local or staged, for drivers that read many small files a few at a time (catalog pictures).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from kuberec.errors import DataError
from kuberec.lake.delta import s3_filesystem
from kuberec.settings import Settings, SettingsError

log = logging.getLogger(__name__)


def is_remote(location: str | Path) -> bool:
    """True for a URI (s3://, s3a://): something a pod reads where it runs, not a path on this machine."""
    return "://" in str(location)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(files: Sequence[Path]) -> str:
    """One SHA-256 over the files' names and contents (order-independent)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _key(uri: str) -> str:
    """The bucket/key part of an s3:// or s3a:// URI, as pyarrow's S3 filesystem names it."""
    return uri.split("://", 1)[1].rstrip("/")


def stage(settings: Settings, files: Sequence[Path], name: str) -> str:
    """Copy local files to `<lake>/raw/<name>/<digest>/` in object storage, where pods can read them; returns that
    prefix as Spark names it (s3a://). Files already there with the same size are kept (the digest in the path
    makes the content the same). Two files of one name would overwrite each other there: DataError."""
    from pyarrow import fs

    if settings.lake_is_local:
        raise SettingsError(f"pods cannot read the local lake {settings.lake_uri!r}; set KUBEREC_LAKE to an s3:// "
                            f"location (and KUBEREC_S3_ENDPOINT for MinIO)")
    files = [Path(path) for path in files]
    if not files:
        raise DataError("no files to stage in the lake")
    clashes = sorted(name for name, count in Counter(path.name for path in files).items() if count > 1)
    if clashes:
        raise DataError(f"files with the same name in different directories ({', '.join(clashes)}) would overwrite "
                        f"each other in the lake: rename them")
    prefix = settings.table_uri(f"raw/{name}/{files_digest(files)[:16]}")
    store = s3_filesystem(settings.s3_endpoint)
    existing = {info.base_name: info.size
                for info in store.get_file_info(fs.FileSelector(_key(prefix), allow_not_found=True))}
    copied = 0
    for path in files:
        if existing.get(path.name) == path.stat().st_size:
            continue
        log.info("staging %s in %s", path.name, prefix)
        fs.copy_files(str(path), f"{_key(prefix)}/{path.name}", source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=store)
        copied += 1
    log.info("%s: %d of %d files copied (the others were already there)", prefix, copied, len(files))
    return prefix


def stage_directory(settings: Settings, directory: Path, name: str) -> str:
    """`stage` of the files directly in a local directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory: nothing to stage in the lake")
    return stage(settings, sorted(p for p in directory.iterdir() if p.is_file()), name)


def list_files(uri: str, endpoint: str | None = None) -> list[str]:
    """The objects directly under the prefix `uri` (s3:// or s3a://), as URIs of the same scheme; `[uri]` when it
    names an object itself. DataError when there is nothing there."""
    from pyarrow import fs

    store = s3_filesystem(endpoint)
    scheme = uri.split("://", 1)[0]
    try:
        info = store.get_file_info(_key(uri))
        if info.type == fs.FileType.File:
            return [uri]
        found = sorted(item.path for item in store.get_file_info(fs.FileSelector(_key(uri), allow_not_found=True))
                       if item.type == fs.FileType.File)
    except OSError as err:  # pyarrow reports S3 errors (access denied, no such bucket) as OSError
        raise DataError(f"cannot list {uri}: {err}") from err
    if not found:
        raise DataError(f"{uri} holds no files (was the source staged with this lake's settings?)")
    return [f"{scheme}://{path}" for path in found]


def read_bytes(location: str, endpoint: str | None = None) -> bytes:
    """The contents of a local file, or of an object (s3:// or s3a://) in the store of `endpoint` (default
    KUBEREC_S3_ENDPOINT). OSError when it cannot be read."""
    if not is_remote(location):
        return Path(location).read_bytes()
    with s3_filesystem(endpoint).open_input_stream(_key(location)) as stream:
        return stream.read()


def fetch(uri: str, directory: Path, endpoint: str | None = None) -> Path:
    """Copy the objects directly under `uri` (s3:// or s3a://) into `directory`; returns it."""
    from pyarrow import fs

    store = s3_filesystem(endpoint)
    directory.mkdir(parents=True, exist_ok=True)
    files = list_files(uri, endpoint)
    for file in files:
        fs.copy_files(_key(file), str(directory / file.rsplit("/", 1)[1]), source_filesystem=store,
                      destination_filesystem=fs.LocalFileSystem())
    log.info("fetched %d files from %s", len(files), uri)
    return directory


# -- a staging area: files dropped under a prefix, picked up once --------------------------------------------------
# A recurring job takes what was dropped under a location (a local directory or an s3:// prefix) since its last run,
# and then moves it to an archive location (Auto Loader's cleanSource=MOVE): the next run sees only newer files, and
# a run that dies between ingesting and archiving leaves the files for the next one (whose ingestion must then
# skip what already landed).


def _store(location: str):
    """(pyarrow filesystem, its path) of a local path or an s3:// / s3a:// URI."""
    from pyarrow import fs

    if is_remote(location):
        return s3_filesystem(), _key(location)
    return fs.LocalFileSystem(), str(Path(location).absolute())


def list_staged(location: str, suffixes: Sequence[str]) -> list[str]:
    """The files under `location` (any depth) whose names end with one of `suffixes`, sorted; [] when there are
    none or the location does not exist."""
    from pyarrow import fs

    store, root = _store(location)
    try:
        found = store.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as err:
        raise DataError(f"cannot list the staging location {location}: {err}") from err
    files = sorted(item.path for item in found
                   if item.type == fs.FileType.File and item.path.lower().endswith(tuple(suffixes)))
    base = location.rstrip("/")
    return [f"{base}/{path[len(root):].lstrip('/')}" for path in files]


def archive(files: Sequence[str], location: str, archive_location: str) -> list[str]:
    """Move `files` (from `list_staged(location)`) to the same relative paths under `archive_location`; returns
    where they went."""
    store, root = _store(location)
    _, archive_root = _store(archive_location)
    moved = []
    for file in files:
        relative = _store(file)[1][len(root):].lstrip("/")
        target = f"{archive_root}/{relative}"
        store.create_dir(target.rsplit("/", 1)[0], recursive=True)
        store.move(_store(file)[1], target)
        moved.append(f"{archive_location.rstrip('/')}/{relative}")
    log.info("archived %d staged files from %s to %s", len(moved), location, archive_location)
    return moved
