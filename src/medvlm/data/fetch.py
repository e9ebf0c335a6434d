"""Fetch a data set's archive over HTTP(S) and extract it safely, for sources given a `url`.

The archive is downloaded to `<cache>/<sha256>.part` with a progress bar; an interrupted transfer is
resumed with an HTTP Range request (within a run, up to FETCH_ATTEMPTS times, and on the next run).
Only an archive whose SHA-256 matches the params is extracted, into `<cache>/<sha256>/` through a temporary
folder, so a later run reuses it and a failed one leaves nothing half-extracted. Extraction refuses any
member that would land outside that folder: absolute names, `..`, links pointing outside, device files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from medvlm.io import DataError, atomic_dir
from medvlm.runtime import log

FETCH_ATTEMPTS = 3
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _transfer(url: str, part: Path) -> bool:
    """One request for the rest of `part`; True when the server says the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is already whole
            return True
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            log.info("%s: server ignored the range request; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if resumed else "wb"
        with open(part, mode) as handle, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                              desc=f"fetch {Path(url).name}", dynamic_ncols=True) as progress:
            while block := response.read(CHUNK_BYTES):
                handle.write(block)
                progress.update(len(block))
    received = part.stat().st_size
    if total is not None and received < total:
        raise ConnectionError(f"transfer cut off after {received} of {total} bytes")
    return True


def download(url: str, sha256: str, target: Path) -> Path:
    """Download `url` to `target` (resuming `target.part`) and check its SHA-256."""
    if not url.startswith(("http://", "https://")):
        raise DataError(f"{url}: only http:// and https:// URLs can be fetched")
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            _transfer(url, part)
            break
        except (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError, OSError) as exc:
            log.warning("%s: attempt %d/%d failed (%s)", url, attempt, FETCH_ATTEMPTS, exc)
    else:
        size = part.stat().st_size if part.exists() else 0
        raise DataError(f"{url}: download incomplete after {FETCH_ATTEMPTS} attempts ({size} bytes in {part}); "
                        "re-run to resume")
    actual = sha256_of(part)
    if actual != sha256.lower():
        part.unlink()
        raise DataError(f"{url}: SHA-256 mismatch: expected {sha256.lower()}, got {actual}; the file was deleted")
    os.replace(part, target)
    return target


def _refuse_escape(name: str, archive: Path) -> None:
    normal = os.path.normpath(name)
    if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
        raise DataError(f"{archive}: member {name!r} would be extracted outside the target folder; refused")


def extract(archive: Path, target: Path) -> Path:
    """Extract a tar (any compression) or zip archive into `target`, refusing members that escape it."""
    with atomic_dir(target) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for info in bundle.infolist():
                    _refuse_escape(info.filename, archive)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refused")
                bundle.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                for member in bundle.getmembers():
                    _refuse_escape(member.name, archive)
                try:
                    # The "data" filter (PEP 706) also refuses links that point outside, and device files.
                    bundle.extractall(tmp, filter="data")
                except tarfile.FilterError as exc:
                    raise DataError(f"{archive}: member {exc.tarinfo.name!r} refused ({exc})") from None
        else:
            raise DataError(f"{archive}: neither a zip nor a tar archive")
    return target


def fetch_source(url: str, sha256: str, cache: Path) -> Path:
    """The extracted folder of the archive at `url`, fetched and extracted unless the cache has it."""
    sha256 = sha256.lower()
    folder = cache / sha256
    if folder.is_dir():
        log.info("%s: using the extracted copy in %s", url, folder)
        return folder
    archive = download(url, sha256, cache / f"{sha256}.archive")
    extract(archive, folder)
    archive.unlink()
    return folder


def source_root(folder: Path, subdir: str) -> Path:
    """The data set's folder inside an extracted archive: `subdir` if given, else the archive's one
    top-level folder if it has exactly one, else the extraction folder itself."""
    if subdir:
        _refuse_escape(subdir, folder)
        return folder / subdir
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder

