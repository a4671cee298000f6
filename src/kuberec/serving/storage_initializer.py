"""KServe storage initializer for s3:// models: `python -m kuberec.serving.storage_initializer SRC DEST [SRC DEST...]`.

KServe runs a storage initializer as the predictor pod's init container with (storageUri, /mnt/models) pairs as
arguments and the S3 credentials and endpoint as environment, taken from the Secrets of the predictor's service
account (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or S3_ENDPOINT + S3_USE_HTTPS). This one is
for clusters that cannot pull KServe's image: the local overlay registers it, in kuberec's serving image, as the
ClusterStorageContainer for s3://. It copies every object under the prefix (a single object: that file) into DEST.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from kuberec.entrypoint import run_program
from kuberec.errors import KuberecError


class ModelDownloadError(KuberecError):
    """The model at the storage URI cannot be fetched."""


def s3_options(env: Mapping[str, str]) -> dict[str, str]:
    """pyarrow S3FileSystem options from the variables KServe injects."""
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("S3_ENDPOINT") or ""
    options: dict[str, str] = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        if not scheme:  # S3_ENDPOINT is host:port; S3_USE_HTTPS says the scheme (KServe's default: https)
            scheme = "http" if env.get("S3_USE_HTTPS", "1") == "0" else "https"
        options.update(endpoint_override=host, scheme=scheme)
    return options


def download(uri: str, dest: Path, env: Mapping[str, str] | None = None) -> int:
    """Copy s3://bucket/prefix into dest; returns how many files were written."""
    from pyarrow import fs

    if not uri.startswith("s3://"):
        raise ModelDownloadError(f"unsupported storage URI {uri!r}: this initializer reads s3:// only")
    path = uri.removeprefix("s3://").rstrip("/")
    store = fs.S3FileSystem(**s3_options(os.environ if env is None else env))
    try:
        info = store.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise ModelDownloadError(f"nothing at {uri}: check the model's storageUri")
        if info.type == fs.FileType.File:
            files = [info]
            root = path.rpartition("/")[0]
        else:
            files = [f for f in store.get_file_info(fs.FileSelector(path, recursive=True))
                     if f.type == fs.FileType.File]
            root = path
        if not files:
            raise ModelDownloadError(f"nothing at {uri}: check the model's storageUri")
        for file in files:
            target = dest / file.path[len(root):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.copy_files(file.path, str(target), source_filesystem=store,
                          destination_filesystem=fs.LocalFileSystem())
    except OSError as err:
        raise ModelDownloadError(f"cannot read {uri}: {err}") from err
    return len(files)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) % 2:
        raise ModelDownloadError("usage: storage_initializer SRC_URI DEST_DIR [SRC_URI DEST_DIR...]")
    for uri, dest in zip(args[::2], args[1::2]):
        count = download(uri, Path(dest))
        print(f"storage initializer: {count} files from {uri} in {dest}")
    return 0


if __name__ == "__main__":
    run_program("kuberec.serving.storage_initializer", main)
