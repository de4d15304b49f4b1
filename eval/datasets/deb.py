"""Obtain a Debian package's ``.deb`` and read files out of it, in pure Python.

Sources, tried in order: a folder of already-downloaded ``.deb`` files, ``apt-get download``,
then an HTTP download from a Debian mirror (``--mirror URL``, or the first mirror in this
machine's apt sources) via the archive's ``Packages`` index, with the SHA256 checked. A
``.deb`` is an ``ar`` archive whose ``data.tar.*`` holds the files; both are read here without
``dpkg``. This module knows nothing of what the files contain.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import re
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

AR_MAGIC = b"!<arch>\n"
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


class DebError(RuntimeError):
    """A package could not be obtained or read; the message says what was tried."""


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (name, content) for each member of an ``ar`` archive."""
    if not data.startswith(AR_MAGIC):
        raise DebError("not a .deb (ar archive magic missing)")
    pos = len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise DebError(f"corrupt ar header at byte {pos}") from exc
        start = pos + 60
        yield name, data[start : start + size]
        pos = start + size + (size % 2)  # members are 2-byte aligned


def read_deb(deb: Path) -> dict[str, bytes]:
    """All regular files in a ``.deb``'s data archive, keyed by absolute path."""
    for name, content in ar_members(deb.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise DebError(f"{deb.name}: zstd-compressed data is not supported")
            files: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(content), mode="r:*") as tar:
                for member in tar:
                    if member.isfile():
                        f = tar.extractfile(member)
                        if f is not None:
                            files["/" + member.name.lstrip("./")] = f.read()
            return files
    raise DebError(f"{deb.name}: no data.tar member")


def _find_local(name: str, folder: Path) -> Path | None:
    hits = sorted(folder.glob(f"{name}_*.deb"))
    return hits[-1] if hits else None


def _apt_download(name: str, dest: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DebError("apt-get is not installed")
    proc = subprocess.run(
        ["apt-get", "download", "-q", name], cwd=dest, capture_output=True, text=True, timeout=300
    )
    found = _find_local(name, dest)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DebError(f"apt-get download {name} failed: {tail[0]}")
    return found


def apt_mirror() -> tuple[str, str] | None:
    """(mirror URL, suite) of the first Debian ``main`` source configured for apt, if any."""
    texts = []
    for src in APT_SOURCES:
        files = sorted(src.glob("*")) if src.is_dir() else [src]
        texts += [f.read_text(errors="replace") for f in files if f.is_file()]
    for text in texts:
        uris = re.search(r"^URIs:\s*(\S+)", text, re.M)
        suites = re.search(r"^Suites:\s*(\S+)", text, re.M)
        if uris and suites and "security" not in uris.group(1):
            return uris.group(1).rstrip("/"), suites.group(1)
        line = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+.*\bmain\b", text, re.M)
        if line and "security" not in line.group(1):
            return line.group(1).rstrip("/"), line.group(2)
    return None


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (http(s) mirror only)
        return bytes(resp.read())


def _http_download(name: str, dest: Path, mirror: str, suite: str) -> Path:
    if not mirror.startswith(("http://", "https://")):
        raise DebError(f"mirror must be an http(s) URL, got {mirror!r}")
    index_url = f"{mirror}/dists/{suite}/main/binary-all/Packages.xz"
    index = lzma.decompress(_http_get(index_url)).decode("utf-8", "replace")
    for stanza in index.split("\n\n"):
        if re.search(rf"^Package:\s*{re.escape(name)}\s*$", stanza, re.M):
            filename = re.search(r"^Filename:\s*(\S+)", stanza, re.M)
            sha = re.search(r"^SHA256:\s*(\S+)", stanza, re.M)
            if not filename or not sha:
                break
            data = _http_get(f"{mirror}/{filename.group(1)}")
            if hashlib.sha256(data).hexdigest() != sha.group(1):
                raise DebError(f"{name}: SHA256 mismatch for {filename.group(1)}")
            out = dest / Path(filename.group(1)).name
            out.write_bytes(data)
            return out
    raise DebError(f"{name} is not in {index_url}")


def obtain_deb(
    name: str,
    dest: Path,
    *,
    deb_dir: Path | None = None,
    mirror: str | None = None,
    suite: str | None = None,
    use_apt: bool = True,
) -> Path:
    """Path to ``name``'s ``.deb``, from ``deb_dir`` or fetched into ``dest`` by the first source
    that works."""
    tried: list[str] = []
    if deb_dir is not None:
        found = _find_local(name, deb_dir)
        if found:
            return found
        tried.append(f"folder {deb_dir}: no {name}_*.deb")
    dest.mkdir(parents=True, exist_ok=True)
    if use_apt:
        try:
            return _apt_download(name, dest)
        except (DebError, OSError, subprocess.SubprocessError) as exc:
            tried.append(str(exc))
    configured = (mirror, suite or "bookworm") if mirror else apt_mirror()
    if configured is None:
        tried.append("HTTP: no mirror given (--mirror URL) and none in apt's sources")
    else:
        try:
            return _http_download(name, dest, configured[0].rstrip("/"), suite or configured[1])
        except (DebError, OSError, lzma.LZMAError) as exc:
            tried.append(f"HTTP from {configured[0]}: {exc}")
    raise DebError(f"could not obtain {name}: " + "; ".join(tried))
