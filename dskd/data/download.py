"""Fetch the benchmarks from their official sources: resumable, verified where a checksum is published,
and extracted without letting an archive write outside its target folder."""

from __future__ import annotations

import hashlib
import logging
import lzma
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DskdError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    url: str | None  # None: the source is an interactive page (no direct link): the user downloads it by hand
    archive: str
    folder: str  # the folder the data ends in, under --root
    sha256: str | None  # None: the source publishes no checksum
    page: str


SOURCES = {
    "mvtec_ad": Source(
        "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
        "mvtec_anomaly_detection.tar.xz", "mvtec_anomaly_detection.tar.xz", "mvtec_ad", None,
        "https://www.mvtec.com/company/research/datasets/mvtec-ad"),
    "mvtec3d": Source(
        "https://www.mydrive.ch/shares/45920/dd1eb345346df066c63b5c95676b961b/download/428824485-1643285832/"
        "mvtec_3d_anomaly_detection.tar.xz", "mvtec_3d_anomaly_detection.tar.xz", "mvtec3d", None,
        "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad"),
    "mt_defects": Source(
        "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip",
        "Magnetic-tile-defect-datasets.zip", "mt_defects", None,
        "https://github.com/abin24/Magnetic-tile-defect-datasets."),
    # MPDD's authors publish it through an interactive SharePoint page linked from their repository; no direct
    # archive link exists to fetch. Their layout is MVTec AD's, so extracting it under <root>/mpdd is all it takes.
    "mpdd": Source(None, "MPDD.zip", "mpdd", None, "https://github.com/stepanje/MPDD"),
}


def _offline_error(name: str, src: Source, root: Path, exc: BaseException) -> DskdError:
    return DskdError(f"cannot reach {src.url.split('/')[2]} ({exc}); download {src.page} elsewhere and extract it "
                     f"to {root / src.folder}")


def fetch(url: str, dest: Path, timeout: float = 20.0) -> Path:
    """Download to `dest`, resuming a `.part` file left by an interrupted download (HTTP Range)."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if have and resp.status != 206:  # the server ignored the range: start over
            have = 0
        total = int(resp.headers.get("Content-Length") or 0) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B",
                                                           unit_scale=True, desc=dest.name) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    part.rename(dest)
    return dest


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _check_member(name: str, archive: Path) -> None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")):
        raise DskdError(f"{archive}: refusing archive member '{name}' (absolute path or '..'); the archive is unsafe")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract, refusing any member that would land outside `target` (and links in tar archives)."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                _check_member(name, archive)
            z.extractall(target)
        return
    with tarfile.open(archive) as t:
        members = t.getmembers()
        for m in members:
            _check_member(m.name, archive)
            if m.issym() or m.islnk():
                raise DskdError(f"{archive}: refusing link member '{m.name}'; the archive is unsafe")
        t.extractall(target, members=members, filter="data")


def _extract(archive: Path, staging: Path, src: Source) -> None:
    """Extract into `staging`; a truncated or corrupt archive is one line, and no staging folder is left."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_extract(archive, staging)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.filename is not None:
            raise  # the disk or the folder, said by the command line as such
        raise DskdError(f"{archive} ({archive.stat().st_size:,} bytes) is not a complete {src.archive} archive "
                        f"({type(exc).__name__}: {exc}); it is truncated or corrupt: delete it and download it again "
                        f"from {src.page}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def download(name: str, root: Path | str) -> Path:
    if name not in SOURCES:
        raise DskdError(f"no download for '{name}'; choose one of {', '.join(SOURCES)}")
    src, root = SOURCES[name], Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / src.archive
    if src.url is None and not archive.exists():
        raise DskdError(f"{name} has no direct download; get it from {src.page}, save the archive as {archive} and "
                        f"run this command again (or extract it to {root / src.folder})")
    if not archive.exists():
        try:
            fetch(src.url, archive)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise _offline_error(name, src, root, exc) from exc
        except OSError as exc:  # writing it: a full disk, a read-only folder
            raise DskdError(f"could not write {archive}.part ({exc.strerror or exc}); free space or choose another "
                            "--root: what was downloaded is kept and the next run resumes it") from exc
    if src.sha256 and sha256sum(archive) != src.sha256:
        raise DskdError(f"{archive}: checksum mismatch; delete it and download again")
    staging = root / f".{src.folder}.extracting"
    _extract(archive, staging, src)
    # Move the extracted data into place: the archive's single top folder, or the staging folder itself.
    entries = [p for p in staging.iterdir()]
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    final = root / src.folder
    if final.exists():
        raise DskdError(f"{final} already exists; remove it to extract again")
    top.rename(final)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("%s ready at %s", name, final)
    return final
