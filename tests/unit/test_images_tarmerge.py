"""Importing archives as one filesystem view: plain and compressed root
tarballs, OCI and `docker save` archives, whiteouts, hard links, the tar
written back out, and the refusals. Every archive is made here with
tarfile; nothing is downloaded."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner.errors import InvalidInput
from provisioner.images import tarmerge
from provisioner.images.tarmerge import ArchiveError, merge, open_layers

T0 = 1_700_000_000
# A capability set with a byte above 0x7f (cap_setuid): not valid UTF-8.
CAP = b"\x01\x00\x00\x02\x80\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
XATTR = "SCHILY.xattr.security.capability"


def F(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.REGTYPE, mode, data=data, **kw)


def D(name: str, mode: int = 0o755, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, mode, **kw)


def S(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target)


def H(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target)


def _info(name: str, type: bytes, mode: int, data: bytes = b"", pax: dict | None = None,
          **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = type, mode, T0
    info.uname = info.gname = "root"
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if type == tarfile.REGTYPE else 0
    info.pax_headers = {k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
                        for k, v in (pax or {}).items()}
    return info, data


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


COMPRESS = {
    "none": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress,
    "bzip2": bz2.compress, "zstd": zstd,
}


def read_back(merged: tarmerge.Merged, mtime: int | None = None) -> list[tarfile.TarInfo]:
    buf = io.BytesIO()
    tarmerge.write_tar(merged, buf, mtime=mtime)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r:") as tf:
        return tf.getmembers()


def contents(merged: tarmerge.Merged) -> dict[str, bytes]:
    """Every regular file and hard link of the tar write_tar makes."""
    buf = io.BytesIO()
    tarmerge.write_tar(merged, buf)
    buf.seek(0)
    out = {}
    with tarfile.open(fileobj=buf, mode="r:") as tf:
        for info in tf:
            if info.isreg() or info.islnk():
                f = tf.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
    return out


def import_(path: Path, work: Path) -> tarmerge.Merged:
    work.mkdir(exist_ok=True)
    return merge(open_layers(path, work))


# -- a docker export / tar -C root -c . tarball ----------------------------

EXPORT = tar_bytes(
    D("./"),
    D("./bin/"),
    F("./bin/su", b"su", mode=0o4755),
    F("./bin/ping", b"ping", mode=0o755, pax={XATTR: CAP}),
    F("./bin/dash", b"dash", mode=0o755),
    H("./bin/rbash", "./bin/dash"),
    S("./bin/sh", "dash"),
    D("./dev/"),
    _info("./dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
    _info("./dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0, gid=6, gname="disk"),
    _info("./run/initctl", tarfile.FIFOTYPE, 0o600),
    F("./home/u/notes", b"hi", mode=0o640, uid=1000, gid=1000, uname="u", gname="u"),
    S("./etc/os-release", "../usr/lib/os-release"),
    F("./usr/lib/os-release", b"ID=debian\n"),
)
EXPORT_PATHS = [
    "", "bin", "bin/dash", "bin/ping", "bin/rbash", "bin/sh", "bin/su", "dev", "dev/null", "dev/sda",
    "etc", "etc/os-release", "home", "home/u", "home/u/notes", "run", "run/initctl", "usr", "usr/lib",
    "usr/lib/os-release",
]


def test_docker_export_tarball_is_one_layer_used_in_place(tmp_path: Path) -> None:
    src = tmp_path / "export.tar"
    src.write_bytes(EXPORT)
    layers = open_layers(src, tmp_path)
    assert layers == [tarmerge.Layer(1, "", src)]
    merged = merge(layers)
    assert merged.paths() == EXPORT_PATHS
    assert merged.count == len(EXPORT_PATHS)
    assert tarmerge.created(merged) == T0
    e = merged.entries
    assert e["bin/su"].mode == 0o4755
    assert e["bin/sh"].type == tarfile.SYMTYPE and e["bin/sh"].linkname == "dash"
    assert e["bin/rbash"].type == tarfile.LNKTYPE and e["bin/rbash"].linkname == "bin/dash"
    assert (e["dev/null"].type, e["dev/null"].devmajor, e["dev/null"].devminor) == (tarfile.CHRTYPE, 1, 3)
    assert e["run/initctl"].type == tarfile.FIFOTYPE
    assert (e["home/u/notes"].uid, e["home/u/notes"].gname) == (1000, "u")
    # Undeclared parents are root's, 0755.
    assert (e["home"].type, e["home"].mode, e["home"].uname, e["home"].uid) == (tarfile.DIRTYPE, 0o755, "root", 0)


def test_write_tar_keeps_metadata_and_sorts(tmp_path: Path) -> None:
    src = tmp_path / "export.tar"
    src.write_bytes(EXPORT)
    merged = import_(src, tmp_path / "w")
    out = {i.name: i for i in read_back(merged)}
    assert list(out) == ["."] + EXPORT_PATHS[1:]
    assert out["bin/su"].mode == 0o4755
    assert out["bin/ping"].pax_headers[XATTR].encode("utf-8", "surrogateescape") == CAP
    assert out["bin/rbash"].islnk() and out["bin/rbash"].linkname == "bin/dash"
    assert out["bin/sh"].issym() and out["bin/sh"].linkname == "dash"
    assert out["dev/sda"].isblk() and (out["dev/sda"].devmajor, out["dev/sda"].gname) == (8, "disk")
    assert out["run/initctl"].isfifo()
    assert (out["home/u/notes"].uid, out["home/u/notes"].uname, out["home/u/notes"].mode) == (1000, "u", 0o640)
    assert {i.mtime for n, i in out.items() if n not in ("home", "home/u", "run", "etc", "usr", "usr/lib")} == {T0}
    assert contents(merged) == {
        "bin/su": b"su", "bin/ping": b"ping", "bin/dash": b"dash", "bin/rbash": b"dash", "home/u/notes": b"hi",
        "usr/lib/os-release": b"ID=debian\n",
    }


def test_write_tar_with_mtime_is_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "export.tar"
    src.write_bytes(EXPORT)
    merged = import_(src, tmp_path / "w")
    assert {i.mtime for i in read_back(merged, mtime=42)} == {42}
    a, b = io.BytesIO(), io.BytesIO()
    tarmerge.write_tar(merged, a, mtime=42)
    tarmerge.write_tar(import_(src, tmp_path / "w2"), b, mtime=42)
    assert a.getvalue() == b.getvalue()


def test_large_files_are_copied_in_chunks(tmp_path: Path) -> None:
    big = bytes(range(256)) * (10 << 10)  # 2.5 MiB: more than one chunk
    src = tmp_path / "r.tar"
    src.write_bytes(tar_bytes(F("big", big), F("small", b"s"), H("big2", "big")))
    merged = import_(src, tmp_path / "w")
    assert contents(merged) == {"big": big, "big2": big, "small": b"s"}
    dest = tmp_path / "dest"
    tarmerge.extract_subset(merged, dest, ("big2",))
    assert (dest / "big2").read_bytes() == big


@pytest.mark.parametrize("method", ["gzip", "xz", "bzip2", "zstd"])
def test_compressed_tarball(tmp_path: Path, method: str) -> None:
    src = tmp_path / "rootfs.tar.x"
    src.write_bytes(COMPRESS[method](EXPORT))
    layers = open_layers(src, tmp_path)
    assert len(layers) == 1 and layers[0].path.parent == tmp_path
    merged = merge(layers)
    assert merged.paths() == EXPORT_PATHS
    assert tarmerge.read_file(merged, "bin/rbash") == b"dash"


def test_read_file_and_resolve_follow_symlinks_inside_the_view(tmp_path: Path) -> None:
    src = tmp_path / "r.tar"
    src.write_bytes(tar_bytes(
        S("etc/os-release", "../usr/lib/os-release"), F("usr/lib/os-release", b"ID=debian\n"),
        S("lib", "usr/lib"), S("abs", "/usr/lib/os-release"), S("loop", "loop"), S("up", "../../../usr"),
        S("dangling", "/nowhere"), H("usr/lib/hard", "usr/lib/os-release"),
    ))
    merged = import_(src, tmp_path / "w")
    read = tarmerge.read_file
    assert read(merged, "etc/os-release") == b"ID=debian\n"
    assert read(merged, "/lib/os-release") == b"ID=debian\n"
    assert read(merged, "abs") == b"ID=debian\n"
    assert read(merged, "up/lib/os-release") == b"ID=debian\n"  # '..' stops at the root
    assert read(merged, "usr/lib/hard") == b"ID=debian\n"
    assert [read(merged, p) for p in ("loop", "dangling", "usr", "nope", "lib/nope")] == [None] * 5
    assert tarmerge.resolve(merged, "lib/os-release") == "usr/lib/os-release"
    assert tarmerge.resolve(merged, "lib") == "usr/lib"
    assert tarmerge.resolve(merged, "loop") is None


# -- an OCI archive with two layers ---------------------------------------

LAYER1 = tar_bytes(
    D("etc/"), F("etc/passwd", b"root:x:0:0"), F("etc/motd", b"hello"),
    D("opt/app/"), F("opt/app/old"), F("opt/app/sub/deep"),
    D("usr/bin/"), F("usr/bin/python3.11", b"py1", mode=0o755), H("usr/bin/python3", "usr/bin/python3.11"),
    F("usr/bin/gzip", b"gz", mode=0o755), H("usr/bin/gunzip", "usr/bin/gzip"),
    D("usr/lib/"), S("lib", "usr/lib"), F("usr/lib/modules/6.1/kernel/a.ko", b"ko"),
    D("srv/"), F("srv/www/index.html"),
)
LAYER2 = tar_bytes(
    F("etc/.wh.motd"),
    D("opt/app/"), F("opt/app/.wh..wh..opq"), F("opt/app/new", b"new"),
    F("usr/bin/python3.11", b"py2", mode=0o755),  # replaces the target of usr/bin/python3
    F("srv", b"a file now"),  # a file replacing a directory drops its subtree
    F("lib/firmware/fw.bin", b"fw"),  # through the lib -> usr/lib symlink
    F("usr/.wh..wh.plnk"),  # AUFS bookkeeping: ignored
)
MERGED_PATHS = [
    "", "etc", "etc/passwd", "lib", "opt", "opt/app", "opt/app/new", "srv", "usr", "usr/bin", "usr/bin/gunzip",
    "usr/bin/gzip", "usr/bin/python3", "usr/bin/python3.11", "usr/lib", "usr/lib/firmware",
    "usr/lib/firmware/fw.bin", "usr/lib/modules", "usr/lib/modules/6.1", "usr/lib/modules/6.1/kernel",
    "usr/lib/modules/6.1/kernel/a.ko",
]
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


class Blobs:
    """An OCI layout being put together: blobs by path, and descriptors."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}

    def add(self, data: bytes, media_type: str, **extra: object) -> dict:
        hexdigest = hashlib.sha256(data).hexdigest()
        self.files[f"blobs/sha256/{hexdigest}"] = data
        return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data), **extra}

    def image(self, layers: list[tuple[bytes, str]], arch: str = "amd64", **extra: object) -> dict:
        config = self.add(json.dumps({"architecture": arch, "os": "linux"}).encode(),
                          "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config,
                    "layers": [self.add(data, mt) for data, mt in layers]}
        return self.add(json.dumps(manifest).encode(), MANIFEST, **extra)

    def write(self, path: Path, manifests: list[dict], **more: bytes) -> Path:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
        files = {**self.files, "index.json": json.dumps(index).encode(), **more}
        path.write_bytes(tar_bytes(*(F(name, data) for name, data in files.items())))
        return path


def two_layer_oci(tmp_path: Path) -> Path:
    blobs = Blobs()
    image = blobs.image([(gzip.compress(LAYER1), GZIP_LAYER), (zstd(LAYER2), ZSTD_LAYER)])
    return blobs.write(tmp_path / "oci.tar", [image])


def test_oci_layers_are_verified_and_decompressed(tmp_path: Path) -> None:
    layers = open_layers(two_layer_oci(tmp_path), tmp_path)
    assert [(l.number, l.source, l.format) for l in layers] == [
        (1, "sha256:" + hashlib.sha256(gzip.compress(LAYER1)).hexdigest(), "oci"),
        (2, "sha256:" + hashlib.sha256(zstd(LAYER2)).hexdigest(), "oci"),
    ]
    assert [l.path.read_bytes() for l in layers] == [LAYER1, LAYER2]
    assert layers[1].label.startswith("layer 2 (sha256:") and layers[1].label.endswith("…)")


def test_oci_merge_whiteouts_opaque_dirs_and_links(tmp_path: Path) -> None:
    merged = merge(open_layers(two_layer_oci(tmp_path), tmp_path))
    assert merged.paths() == MERGED_PATHS
    e = merged.entries
    assert (e["usr/lib/firmware"].mode, e["usr/lib/firmware"].uname) == (0o755, "root")
    assert e["srv"].type == tarfile.REGTYPE
    files = contents(merged)
    assert files == {
        "etc/passwd": b"root:x:0:0", "opt/app/new": b"new", "srv": b"a file now",
        "usr/bin/gunzip": b"gz", "usr/bin/gzip": b"gz",
        # The hard link's target was replaced: it keeps the old contents, as on overlayfs.
        "usr/bin/python3": b"py1", "usr/bin/python3.11": b"py2",
        "usr/lib/firmware/fw.bin": b"fw", "usr/lib/modules/6.1/kernel/a.ko": b"ko",
    }
    out = {i.name: i for i in read_back(merged)}
    assert out["usr/bin/python3"].isreg() and out["usr/bin/python3"].mode == 0o755
    # Still linked, the data now under the name written first.
    assert out["usr/bin/gunzip"].isreg()
    assert out["usr/bin/gzip"].islnk() and out["usr/bin/gzip"].linkname == "usr/bin/gunzip"
    assert not any(".wh." in name for name in out)


def test_oci_opaque_dir_keeps_same_layer_entries_whatever_their_order(tmp_path: Path) -> None:
    upper = tar_bytes(F("opt/app/new", b"new"), F("opt/app/.wh..wh..opq"), F("opt/app/.wh.gone"))
    blobs = Blobs()
    image = blobs.image([(LAYER1, "application/vnd.oci.image.layer.v1.tar"), (upper, GZIP_LAYER)])
    merged = import_(blobs.write(tmp_path / "oci.tar", [image]), tmp_path / "w")
    assert [p for p in merged.paths() if p.startswith("opt/")] == ["opt/app", "opt/app/new"]


def test_oci_index_picks_linux_amd64_through_a_nested_index(tmp_path: Path) -> None:
    blobs = Blobs()
    arm = blobs.image([(tar_bytes(F("arm")), GZIP_LAYER)], arch="arm64",
                      platform={"os": "linux", "architecture": "arm64", "variant": "v8"})
    amd = blobs.image([(tar_bytes(F("amd")), GZIP_LAYER)], platform={"os": "linux", "architecture": "amd64"})
    attestation = blobs.add(b"{}", MANIFEST, platform={"os": "unknown", "architecture": "unknown"},
                            annotations={"vnd.docker.reference.type": "attestation-manifest"})
    nested = blobs.add(json.dumps({"schemaVersion": 2, "manifests": [arm, amd, attestation]}).encode(), INDEX)
    merged = import_(blobs.write(tmp_path / "oci.tar", [nested]), tmp_path / "w")
    assert merged.paths() == ["", "amd"]


def test_oci_index_skips_manifests_the_archive_lacks(tmp_path: Path) -> None:
    # docker save of one platform keeps the whole index, one manifest.
    blobs = Blobs()
    arm = blobs.image([(tar_bytes(F("arm")), GZIP_LAYER)], platform={"os": "linux", "architecture": "arm64"})
    for name in [n for n in blobs.files if n.endswith(arm["digest"].split(":")[1])]:
        del blobs.files[name]
    only = blobs.image([(tar_bytes(F("s390x")), GZIP_LAYER)], platform={"os": "linux", "architecture": "s390x"})
    merged = import_(blobs.write(tmp_path / "oci.tar", [arm, only]), tmp_path / "w")
    assert merged.paths() == ["", "s390x"]


def test_oci_index_without_amd64_lists_platforms(tmp_path: Path) -> None:
    blobs = Blobs()
    arm = blobs.image([(tar_bytes(F("a")), GZIP_LAYER)], platform={"os": "linux", "architecture": "arm64"})
    ppc = blobs.image([(tar_bytes(F("p")), GZIP_LAYER)], platform={"os": "linux", "architecture": "ppc64le"},
                      annotations={"org.opencontainers.image.ref.name": "1.0"})
    path = blobs.write(tmp_path / "oci.tar", [arm, ppc])
    with pytest.raises(ArchiveError, match=r"holds 2 images \(linux/arm64, linux/ppc64le \(1.0\)\); "
                                           r"need exactly one linux/amd64"):
        open_layers(path, tmp_path)


def test_oci_digest_mismatch_names_both(tmp_path: Path) -> None:
    blobs = Blobs()
    image = blobs.image([(gzip.compress(LAYER1), GZIP_LAYER)])
    manifest = json.loads(blobs.files[f"blobs/sha256/{image['digest'][7:]}"])
    stored = manifest["layers"][0]["digest"][7:]
    blobs.files[f"blobs/sha256/{stored}"] = gzip.compress(LAYER2)
    actual = hashlib.sha256(gzip.compress(LAYER2)).hexdigest()
    with pytest.raises(ArchiveError) as err:
        open_layers(blobs.write(tmp_path / "oci.tar", [image]), tmp_path)
    assert err.value.message == (f"layer 1 (sha256:{stored[:12]}…): blob digest is sha256:{actual}, "
                                 f"the manifest says sha256:{stored}")
    assert err.value.status == 400 and isinstance(err.value, InvalidInput)


# -- docker save -----------------------------------------------------------


def docker_save(path: Path, images: list[dict], files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    members = [F(name, data) for name, data in files.items()]
    members += [S(name, target) for name, target in (links or {}).items()]
    members.append(F("manifest.json", json.dumps(images).encode()))
    path.write_bytes(tar_bytes(*members))
    return path


def test_docker_save_archive(tmp_path: Path) -> None:
    # Old releases name layers by ID and link a layer two images share.
    path = docker_save(
        tmp_path / "save.tar",
        [{"Config": "c.json", "RepoTags": ["app:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}],
        {"ccc/layer.tar": LAYER1, "bbb/layer.tar": LAYER2, "c.json": b"{}"},
        links={"aaa/layer.tar": "../ccc/layer.tar"},
    )
    layers = open_layers(path, tmp_path)
    assert [(l.number, l.source, l.format) for l in layers] == [(1, "aaa/layer.tar", "docker"),
                                                                (2, "bbb/layer.tar", "docker")]
    assert merge(layers).paths() == MERGED_PATHS


def test_docker_25_archive_prefers_the_oci_index(tmp_path: Path) -> None:
    blobs = Blobs()
    image = blobs.image([(LAYER1, "application/vnd.oci.image.layer.v1.tar"),
                         (LAYER2, "application/vnd.oci.image.layer.v1.tar")])
    first = f"blobs/sha256/{hashlib.sha256(LAYER1).hexdigest()}"
    legacy = json.dumps([{"Config": "x", "RepoTags": ["app:1"], "Layers": [first]}]).encode()
    merged = import_(blobs.write(tmp_path / "both.tar", [image], **{"manifest.json": legacy}), tmp_path / "w")
    assert merged.paths() == MERGED_PATHS


def test_docker_save_of_several_images_lists_their_tags(tmp_path: Path) -> None:
    path = docker_save(tmp_path / "save.tar", [
        {"Config": "a.json", "RepoTags": ["app:1", "app:latest"], "Layers": ["a/layer.tar"]},
        {"Config": "b.json", "RepoTags": None, "Layers": ["a/layer.tar"]},
    ], {"a/layer.tar": LAYER1})
    with pytest.raises(ArchiveError, match=r"^archive: holds 2 images \(app:1, app:latest, <untagged>\); "
                                           r"save just one$"):
        open_layers(path, tmp_path)


def test_docker_save_blob_names_are_checked(tmp_path: Path) -> None:
    name = f"blobs/sha256/{'0' * 64}"
    path = docker_save(tmp_path / "save.tar", [{"RepoTags": [], "Layers": [name]}], {name: LAYER1})
    with pytest.raises(ArchiveError, match=r"^layer 1 \(sha256:000000000000…\): blob digest is sha256:[0-9a-f]{64}, "
                                           r"its name says sha256:0{64}$"):
        open_layers(path, tmp_path)


@pytest.mark.parametrize("method", ["none", "gzip"])
def test_a_tarball_with_an_unrelated_manifest_json_is_a_rootfs(tmp_path: Path, method: str) -> None:
    path = tmp_path / "r.tar"
    path.write_bytes(COMPRESS[method](tar_bytes(F("manifest.json", b'{"name": "app"}'), F("bin/app", b"x"))))
    merged = import_(path, tmp_path / "w")
    assert merged.paths() == ["", "bin", "bin/app", "manifest.json"]
    assert tarmerge.read_file(merged, "bin/app") == b"x"


def test_a_compressed_image_archive_leaves_only_its_layers(tmp_path: Path) -> None:
    path = tmp_path / "oci.tar.gz"
    path.write_bytes(gzip.compress(two_layer_oci(tmp_path).read_bytes()))
    work = tmp_path / "w/layers"  # made as needed
    assert merge(open_layers(path, work)).paths() == MERGED_PATHS
    assert sorted(p.name for p in work.iterdir()) == ["layer-1.tar", "layer-2.tar"]


# -- refusals ---------------------------------------------------------------


def oci_with_layer(tmp_path: Path, layer: bytes) -> Path:
    blobs = Blobs()
    return blobs.write(tmp_path / "oci.tar", [blobs.image([(layer, GZIP_LAYER)])])


@pytest.mark.parametrize("members, message", [
    ((F("../etc/passwd"),), "archive: entry '../etc/passwd' escapes the root"),
    ((F("usr/../../x"),), "archive: entry 'usr/../../x' escapes the root"),
    ((H("etc/shadow", "/etc/missing"),),
     "archive: hard link 'etc/shadow' points at 'etc/missing', which is not there"),
    ((D("etc"), H("etc/x", "etc")), "archive: hard link 'etc/x' points at directory 'etc'"),
    ((F("."),), "archive: the root entry is not a directory"),
    ((F("bin"), F("bin/sh")), "archive: entry 'bin/sh' cannot be placed: 'bin' is not a directory"),
    ((S("a", "b"), S("b", "a"), F("a/x")), "archive: entry 'a/x' cannot be placed: too many symlinks at 'a'"),
    ((F("etc/.wh."),), "archive: whiteout 'etc/.wh.' names nothing"),
])
def test_bad_entries(tmp_path: Path, members: tuple, message: str) -> None:
    path = tmp_path / "r.tar"
    path.write_bytes(tar_bytes(*members))
    with pytest.raises(ArchiveError) as err:
        import_(path, tmp_path / "w")
    assert err.value.message == message


def test_bad_entry_in_a_layer_names_the_layer(tmp_path: Path) -> None:
    layer = gzip.compress(tar_bytes(F("../../etc/passwd")))
    digest = hashlib.sha256(layer).hexdigest()
    with pytest.raises(ArchiveError, match=rf"^layer 1 \(sha256:{digest[:12]}…\): entry '../../etc/passwd' "
                                           r"escapes the root$"):
        import_(oci_with_layer(tmp_path, layer), tmp_path / "w")


@pytest.mark.parametrize("data, message", [
    (b"", r"^x: the file is empty$"),
    (b"not an archive at all\n" * 100, r"^archive: not a readable tar archive, compressed or not \(invalid header\)$"),
    (gzip.compress(EXPORT)[:-20], r"^archive: gzip data is corrupt or truncated \(.+\)$"),
    (gzip.compress(b"plain text, gzipped\n" * 50), r"^archive: not a readable tar archive, compressed or not \(invalid header\)$"),
    (zstd(EXPORT)[:-30], r"^archive: zstd data is corrupt or truncated \(.+\)$"),
    (EXPORT[:1700], r"^archive: not a readable tar archive, compressed or not \(unexpected end of data\)$"),
    (b"\0" * 10240, r"^archive: holds no files$"),
])
def test_unreadable_archives(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "x"
    path.write_bytes(data)
    with pytest.raises(ArchiveError, match=message) as err:
        import_(path, tmp_path / "w")
    assert "\n" not in err.value.message


def test_truncated_layer_blob(tmp_path: Path) -> None:
    layer = gzip.compress(LAYER1)
    blobs = Blobs()  # the same archive, the layer blob cut short but named by the full digest
    image = blobs.image([(layer, GZIP_LAYER)])
    blobs.files[f"blobs/sha256/{hashlib.sha256(layer).hexdigest()}"] = layer[: len(layer) // 2]
    path = blobs.write(tmp_path / "cut.tar", [image])
    with pytest.raises(ArchiveError, match=r"^layer 1 \(sha256:[0-9a-f]{12}…\): gzip data is corrupt or truncated"):
        open_layers(path, tmp_path)


def test_empty_layers_are_allowed(tmp_path: Path) -> None:
    blobs = Blobs()
    image = blobs.image([(gzip.compress(tar_bytes()), GZIP_LAYER), (gzip.compress(LAYER1), GZIP_LAYER)])
    merged = import_(blobs.write(tmp_path / "oci.tar", [image]), tmp_path / "w")
    assert "usr/bin/gzip" in merged.entries


def test_missing_blob(tmp_path: Path) -> None:
    blobs = Blobs()
    image = blobs.image([(LAYER1, GZIP_LAYER)])
    del blobs.files[f"blobs/sha256/{hashlib.sha256(LAYER1).hexdigest()}"]
    with pytest.raises(ArchiveError, match=r"^layer 1 \(sha256:[0-9a-f]{12}…\): "
                                           r"'blobs/sha256/[0-9a-f]{64}' is not in the archive$"):
        open_layers(blobs.write(tmp_path / "oci.tar", [image]), tmp_path)


# -- extracting the parts the importer reads --------------------------------

DEBIAN = tar_bytes(
    D("./"), S("lib", "usr/lib"), S("vmlinuz", "boot/vmlinuz-6.1.0-18-amd64"),
    D("boot/"), F("boot/vmlinuz-6.1.0-18-amd64", b"kernel", mode=0o600), F("boot/config-6.1.0-18-amd64"),
    D("usr/lib/modules/6.1.0-18-amd64/kernel/"), F("usr/lib/modules/6.1.0-18-amd64/kernel/e1000.ko", b"ko"),
    F("usr/lib/modules/6.1.0-18-amd64/modules.dep", b"dep"),
    H("usr/lib/modules/6.1.0-18-amd64/modules.alias", "usr/lib/modules/6.1.0-18-amd64/modules.dep"),
    S("usr/lib/modules/6.1.0-18-amd64/build", "/usr/src/linux-headers-6.1.0-18-amd64"),
    _info("usr/lib/modules/fifo", tarfile.FIFOTYPE, 0o600),
    F("usr/lib/os-release", b"ID=debian\n"),
    F("var/lib/dpkg/status", b"Package: base-files\n"), F("var/lib/dpkg/available"),
)
PREFIXES = ("boot/", "lib/modules/", "usr/lib/modules/", "var/lib/dpkg/status", "nope/")


def test_extract_subset_through_the_usr_merge_symlink(tmp_path: Path) -> None:
    src = tmp_path / "debian.tar"
    src.write_bytes(DEBIAN)
    merged = import_(src, tmp_path / "w")
    dest = tmp_path / "dest"
    got = tarmerge.extract_subset(merged, dest, PREFIXES)
    assert got == [
        "boot", "boot/config-6.1.0-18-amd64", "boot/vmlinuz-6.1.0-18-amd64",
        "usr/lib/modules", "usr/lib/modules/6.1.0-18-amd64", "usr/lib/modules/6.1.0-18-amd64/build",
        "usr/lib/modules/6.1.0-18-amd64/kernel", "usr/lib/modules/6.1.0-18-amd64/kernel/e1000.ko",
        "usr/lib/modules/6.1.0-18-amd64/modules.alias", "usr/lib/modules/6.1.0-18-amd64/modules.dep",
        "var/lib/dpkg/status",
    ]
    on_disk = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert on_disk == sorted(set(got) | {"usr", "usr/lib", "var", "var/lib", "var/lib/dpkg"})
    mod = dest / "usr/lib/modules/6.1.0-18-amd64"
    assert (mod / "kernel/e1000.ko").read_bytes() == b"ko"
    assert (mod / "modules.alias").read_bytes() == b"dep"
    assert os.readlink(mod / "build") == "/usr/src/linux-headers-6.1.0-18-amd64"
    assert (dest / "boot/vmlinuz-6.1.0-18-amd64").stat().st_mode & 0o7777 == 0o600
    assert (dest / "var/lib/dpkg/status").read_bytes() == b"Package: base-files\n"


def test_extract_subset_never_writes_through_a_symlink(tmp_path: Path) -> None:
    src = tmp_path / "debian.tar"
    src.write_bytes(DEBIAN)
    merged = import_(src, tmp_path / "w")
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "var").symlink_to(outside)
    with pytest.raises(ArchiveError, match=r"^cannot extract 'var/lib/dpkg/status' to .*/dest: Not a directory$"):
        tarmerge.extract_subset(merged, dest, ("var/lib/dpkg/status",))
    assert list(outside.iterdir()) == []


def test_extract_subset_replaces_a_planted_symlink_file(tmp_path: Path) -> None:
    src = tmp_path / "debian.tar"
    src.write_bytes(DEBIAN)
    merged = import_(src, tmp_path / "w")
    dest, victim = tmp_path / "dest", tmp_path / "victim"
    victim.write_bytes(b"keep")
    (dest / "var/lib/dpkg").mkdir(parents=True)
    (dest / "var/lib/dpkg/status").symlink_to(victim)
    tarmerge.extract_subset(merged, dest, ("var/lib/dpkg/status",))
    assert victim.read_bytes() == b"keep"
    assert not (dest / "var/lib/dpkg/status").is_symlink()
    assert (dest / "var/lib/dpkg/status").read_bytes() == b"Package: base-files\n"


def test_layers_placed_through_symlinks_stay_inside_the_root(tmp_path: Path) -> None:
    # An absolute symlink resolves against the archive root, never the host.
    path = tmp_path / "r.tar"
    path.write_bytes(tar_bytes(S("evil", "/"), S("up", "../../.."), F("evil/etc/x", b"1"), F("up/y", b"2")))
    merged = import_(path, tmp_path / "w")
    assert merged.paths() == ["", "etc", "etc/x", "evil", "up", "y"]
    dest = tmp_path / "dest"
    assert tarmerge.extract_subset(merged, dest, ("evil/etc/",)) == ["etc", "etc/x"]
    assert sorted(p.name for p in dest.iterdir()) == ["etc"]
