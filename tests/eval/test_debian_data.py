"""The Debian FAQ converter on small fixture packages written here: parsing, leaks, fetching."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval.datasets import deb as debmod
from eval.datasets.deb import DebError, ar_members, obtain_deb, read_deb
from eval.datasets.debian import PACKAGES, build, join_wrapped, parse_sections

N = "\u00a0"
FAQ_ZH = f"""
                      Debian GNU/Linux 常见问题

目录

1. 定义和概览
    1.1. 什么是 Debian GNU/Linux？

第{N}1{N}章{N}定义和概览

1.1.{N}什么是 Debian GNU/Linux？

    Debian GNU/Linux 是 Linux 操作系统的一个发行版，以及其上运行的无数软件
    包。它由志愿者维护，请参见第 1.2 节 “如何安装 Debian 软件包并保持系统更
    新？”。

1.2.{N}如何安装 Debian 软件包并保持系统更新？

    使用 apt 工具安装软件包，然后定期运行更新命令来保持系统处于最新的状态，
    这样做很安全。

第{N}2{N}章{N}兼容性

2.1.{N}父节

2.1.1.{N}Debian 能在哪些硬件架构上运行，包括那些比较少见的体系结构和
平台？

    Debian 支持多种硬件架构，包括 amd64 和 arm64 以及其他许多常见的和少见的平
    台。
"""

REF_ZH = f"""
第{N}1{N}章{N}教程

1.1.{N}文件系统

    文件系统是一个树形结构，从根目录开始，所有的文件和目录都挂载在这棵树上的某
    个位置。

1.2.{N}空节

附录{N}A.{N}附录

A.1.{N}不应出现

    附录内容。
"""

FAQ_EN = f"""
Chapter{N}1.{N}Definitions and overview

1.1.{N}What is this FAQ?

    This document gives frequently asked questions (with their answers!)
    about the Debian distribution. If you can't find it, be sure to check
    out Section{N}1.2, “Where do I find more documentation about the Debian
    system?”.

1.2.{N}Where do I find more documentation about the Debian system?

    Look under /usr/share/doc and at https://www.debian.org/doc/user-
    manuals for the manuals.
"""

REF_EN = f"""
Chapter{N}1.{N}GNU/Linux tutorials

1.1.{N}Console basics

    The shell prompt is where commands are typed in a terminal on the system
    console.

    $ ls -la
    total 0
"""


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(folder: Path, package: str, files: dict[str, str]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path, text in files.items():
            data = gzip.compress(text.encode())
            info = tarfile.TarInfo("." + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = folder / f"{package}_1.0_all.deb"
    deb.write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())])
    )
    return deb


@pytest.fixture
def deb_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "debs"
    folder.mkdir()
    for lang, faq, ref in (("zh", FAQ_ZH, REF_ZH), ("en", FAQ_EN, REF_EN)):
        (faq_pkg, faq_path), (ref_pkg, ref_path) = (
            PACKAGES[lang]["faq"],
            PACKAGES[lang]["reference"],
        )
        make_deb(folder, faq_pkg, {faq_path: faq})
        make_deb(folder, ref_pkg, {ref_path: ref})
    return folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_beir_folder_and_documents_for_chinese(deb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "zh"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval",
            "data",
            "debian-faq",
            "--lang",
            "zh",
            "--out",
            str(out),
            "--deb-dir",
            str(deb_dir),
            "--no-apt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    queries, corpus = _jsonl(out / "queries.jsonl"), _jsonl(out / "corpus.jsonl")
    assert [q["_id"] for q in queries] == ["q-1.1", "q-1.2", "q-2.1.1"]  # 2.1 has no answer
    assert queries[2]["text"] == "Debian 能在哪些硬件架构上运行，包括那些比较少见的体系结构和平台？"
    faq = {d["_id"]: d for d in corpus if d["metadata"]["kind"] == "faq"}
    # wrapped Chinese is re-joined without spaces; Latin words keep theirs
    assert "无数软件包。" in faq["faq-1.1"]["text"]
    assert "保持系统处于最新的状态，这样做很安全" in faq["faq-1.2"]["text"]
    assert "包括 amd64 和 arm64" in faq["faq-2.1.1"]["text"]
    assert "\n" not in faq["faq-1.2"]["text"]
    # the quoted question in the cross-reference is gone, the section number stays
    assert "第 1.2 节" in faq["faq-1.1"]["text"] and "如何安装" not in faq["faq-1.1"]["text"]
    assert faq["faq-1.1"]["title"] == "定义和概览"
    for q in queries:
        assert all(q["text"] not in d["text"] and q["text"] not in d["title"] for d in corpus)
    refs = [d for d in corpus if d["metadata"]["kind"] == "reference"]
    assert [d["_id"] for d in refs] == ["ref-1.1"]  # empty section and appendix skipped
    assert "挂载在这棵树上的某个位置" in refs[0]["text"]
    qrels = (out / "qrels" / "test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and "q-2.1.1\tfaq-2.1.1\t1" in qrels
    docs = _jsonl(out / "documents" / "faq.jsonl") + _jsonl(out / "documents" / "reference.jsonl")
    assert {d["id"] for d in docs} == {d["_id"] for d in corpus}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checks"]["questions_in_indexed_text"] == 0
    assert queries[1]["answer"].startswith("使用 apt 工具安装软件包")


def test_english_parsing_keeps_urls_and_code_lines(deb_dir: Path) -> None:
    files = read_deb(next(deb_dir.glob("debian-faq_*.deb")))
    assert PACKAGES["en"]["faq"][1] in files
    ds = build(FAQ_EN, REF_EN, "en")
    faq = {d["_id"]: d["text"] for d in ds.corpus}
    assert "https://www.debian.org/doc/user-manuals" in faq["faq-1.2"]
    assert "Section 1.2." in faq["faq-1.1"] and "Where do I find" not in faq["faq-1.1"]
    assert "terminal on the system console." in faq["ref-1.1"]
    assert "$ ls -la\ntotal 0" in faq["ref-1.1"]


def test_join_wrapped_rules() -> None:
    assert join_wrapped("软件", "包") == "软件包"
    assert join_wrapped("发行版（", "Debian") == "发行版（Debian"
    assert join_wrapped("和", "Debian 项目") == "和 Debian 项目"
    assert join_wrapped("the", "Debian") == "the Debian"


def test_text_without_chapters_is_rejected() -> None:
    with pytest.raises(ValueError, match="Chapter"):
        parse_sections("just some text\n")


def test_corrupt_deb_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x_1_all.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DebError, match="not a .deb"):
        read_deb(bad)
    assert list(ar_members(_ar([("a", b"xyz"), ("b", b"12")]))) == [("a", b"xyz"), ("b", b"12")]


def test_no_source_lists_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debmod, "APT_SOURCES", ())
    with pytest.raises(DebError) as info:
        obtain_deb("debian-faq", tmp_path / "w", deb_dir=tmp_path, use_apt=False)
    assert "no debian-faq_*.deb" in str(info.value) and "--mirror" in str(info.value)


@pytest.fixture
def mirror(tmp_path: Path, deb_dir: Path):
    """A Debian-style mirror on 127.0.0.1: dists/<suite>/main/binary-all/Packages.xz and pool/."""
    root = tmp_path / "mirror"
    pool = root / "pool" / "main" / "d"
    pool.mkdir(parents=True)
    stanzas = []
    for deb in sorted(deb_dir.glob("*.deb")):
        (pool / deb.name).write_bytes(deb.read_bytes())
        name = deb.name.split("_")[0]
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        stanzas.append(
            f"Package: {name}\nVersion: 1.0\nFilename: pool/main/d/{deb.name}\nSHA256: {sha}\n"
        )
    index = root / "dists" / "stable" / "main" / "binary-all"
    index.mkdir(parents=True)
    (index / "Packages.xz").write_bytes(lzma.compress("\n".join(stanzas).encode()))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_fallback_downloads_and_verifies(mirror, tmp_path: Path) -> None:
    root, url = mirror
    deb = obtain_deb("debian-faq-zh-cn", tmp_path / "w", mirror=url, suite="stable", use_apt=False)
    assert PACKAGES["zh"]["faq"][1] in read_deb(deb)
    tampered = next((root / "pool" / "main" / "d").glob("debian-reference-en_*.deb"))
    tampered.write_bytes(tampered.read_bytes() + b"x")
    with pytest.raises(DebError, match="SHA256 mismatch"):
        obtain_deb(
            "debian-reference-en", tmp_path / "w2", mirror=url, suite="stable", use_apt=False
        )
