"""Image references, manifests, definitions and the blob store."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from provisioner.core.imageref import parse_digest, parse_ref
from provisioner.errors import InvalidInput
from provisioner.images.definition import DefinitionError, definition_digest, load_definition
from provisioner.images.manifest import Artifact, ImageManifest, parse_manifest
from provisioner.images.store import Store

HEXES = {n: hashlib.sha256(n.encode()).hexdigest() for n in ("kernel", "rootfs.squashfs", "modules.cpio")}


@pytest.mark.parametrize("text,name,tag,channel", [
    ("tiny@1.0.0", "tiny", "1.0.0", False),
    ("debian-12@12.8+1", "debian-12", "12.8+1", False),
    ("tiny@stable", "tiny", "stable", True),
    ("a.b_c@beta-2", "a.b_c", "beta-2", True),
])
def test_refs(text, name, tag, channel):
    ref = parse_ref(text)
    assert (ref.name, ref.tag, ref.is_channel, str(ref)) == (name, tag, channel, text)


@pytest.mark.parametrize("text,why", [
    ("tiny", "expected NAME@VERSION"),
    ("tiny@", "expected NAME@VERSION"),
    ("Tiny@1.0", "image name"),
    ("tiny@1.0/../x", "version"),
    ("tiny@Stable", "channel"),
    ("../x@1", "image name"),
    ("tiny@1 0", "version"),
])
def test_bad_refs(text, why):
    with pytest.raises(InvalidInput, match=why):
        parse_ref(text)


def test_digest_refs():
    assert parse_digest("sha256:" + "a" * 64) == "a" * 64
    assert parse_digest("sha256:" + "A" * 64) is None
    assert parse_digest("tiny@1.0") is None


def manifest(**kw):
    base = dict(
        name="tiny", version="1.0.0", created=1700000000,
        artifacts=tuple(Artifact(n, 10, h) for n, h in HEXES.items()),
        kernel_version="6.1.0-56-amd64", packages=(("busybox-static", "1:1.35.0-4+b3"),),
        modules=("virtio_net",), source={"kind": "definition", "sha256": "b" * 64},
    )
    base.update(kw)
    return ImageManifest(**base)


def test_manifest_round_trip_and_digest_is_stable():
    m = manifest()
    again = parse_manifest(m.canonical())
    assert again == m
    assert again.digest == m.digest == hashlib.sha256(m.canonical()).hexdigest()
    doc = json.loads(m.canonical())
    assert doc["created"] == "2023-11-14T22:13:20Z"
    assert list(doc["artifacts"]) == sorted(doc["artifacts"])
    assert manifest(version="1.0.1").digest != m.digest


@pytest.mark.parametrize("mutate,why", [
    (lambda d: d.pop("artifacts"), "artifacts"),
    (lambda d: d["artifacts"]["kernel"].update(sha256="zz"), "bad size or sha256"),
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d.update(version="stable"), "version"),
])
def test_manifest_refuses_bad_documents(mutate, why):
    doc = json.loads(manifest().canonical())
    mutate(doc)
    with pytest.raises(InvalidInput, match=why):
        parse_manifest(json.dumps(doc).encode())
    with pytest.raises(InvalidInput, match="not JSON"):
        parse_manifest(b"{nope")


def write_def(d: Path, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "image.toml").write_text(text)
    return d


GOOD = 'name = "tiny"\nversion = "1.0.0"\n[base]\nmethod = "unpack"\n[packages]\nkernel = "linux-image-amd64"\ninstall = ["busybox-static"]\n'


def test_definition_loads(tmp_path):
    d = write_def(tmp_path / "tiny", GOOD)
    defn = load_definition(d)
    assert (defn.ref, defn.method, defn.kernel, defn.install) == ("tiny@1.0.0", "unpack", "linux-image-amd64",
                                                                   ("busybox-static",))
    assert load_definition(d / "image.toml").digest == defn.digest


@pytest.mark.parametrize("text,why", [
    ('name = "tiny"\n', "version: missing"),
    (GOOD + 'colour = "red"\n', "colour: unknown key"),
    (GOOD.replace('"unpack"', '"yum"'), "base.method"),
    (GOOD.replace('"1.0.0"', '"latest"'), "version 'latest'"),
    (GOOD.replace('install = ["busybox-static"]', 'install = "busybox-static"'), "packages.install: expected a list"),
    ('name = "t"\nversion = "1"\n[base]\nimage = "tiny@stable"\n', "is a channel"),
    ('name = "t"\nversion = "1"\n[base]\nmethod = "unpack"\n', "packages.kernel: missing"),
    ("name = [", "not valid TOML"),
    (GOOD.replace('method = "unpack"', 'method = "unpack"\nsources = ["deb http://x bookworm main"]'), "only for method"),
    (GOOD.replace('method = "unpack"', 'method = "mmdebstrap"\nsources = ["http://x bookworm"]'), "base.sources"),
])
def test_definition_errors_name_the_key(tmp_path, text, why):
    d = write_def(tmp_path / "x", text)
    with pytest.raises(DefinitionError, match=why):
        load_definition(d)


def test_definition_without_toml(tmp_path):
    with pytest.raises(DefinitionError, match="no image.toml"):
        load_definition(tmp_path)


def test_definition_digest_covers_files_and_hooks_not_docs(tmp_path):
    d = write_def(tmp_path / "tiny", GOOD)
    first = definition_digest(d)
    (d / "README.md").write_text("docs")
    assert definition_digest(d) == first
    (d / "files" / "etc").mkdir(parents=True)
    assert definition_digest(d) != first
    with_dir = definition_digest(d)
    (d / "files/etc/motd").write_text("hi")
    with_file = definition_digest(d)
    assert with_file != with_dir
    os.chmod(d / "files/etc/motd", 0o755)
    assert definition_digest(d) != with_file
    (d / "hooks").mkdir()
    (d / "hooks/10-x").write_text("#!/bin/sh\n")
    assert definition_digest(d) not in (first, with_dir, with_file)


def test_store_ingest_is_content_addressed_and_read_only(tmp_path):
    store = Store(tmp_path / "images").ensure()
    with store.staging() as st:
        f = st.path / "a"
        f.write_bytes(b"hello")
        blob = store.ingest(f)
        assert blob.sha256 == hashlib.sha256(b"hello").hexdigest() and blob.size == 5
        assert not f.exists() and store.read(blob.sha256) == b"hello"
        assert store.path(blob.sha256).stat().st_mode & 0o777 == 0o444
        g = st.path / "b"
        g.write_bytes(b"hello")
        assert store.ingest(g) == blob  # dedup: same name, one file
        h = st.path / "c"
        h.write_bytes(b"other")
        with pytest.raises(InvalidInput, match="expected"):
            store.ingest(h, expected=blob.sha256)
    assert list(store.all_blobs()) == [blob.sha256]
    assert not any(store.tmp.iterdir())  # staging removed on exit


def test_store_path_refuses_non_digests(tmp_path):
    store = Store(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63):
        with pytest.raises(InvalidInput):
            store.path(bad)


def test_stale_staging_of_a_dead_owner_is_removed_live_one_kept(tmp_path):
    import subprocess
    import sys

    store = Store(tmp_path / "images").ensure()
    live = store.staging()
    # A child takes a staging directory and dies without cleaning up.
    code = ("import sys; sys.path.insert(0, %r); from provisioner.images.store import Store;"
            "s = Store(%r).staging(); (s.path / 'partial').write_bytes(b'x' * 100); import os; os._exit(9)")
    subprocess.run([sys.executable, "-c", code % (str(Path.cwd()), str(store.root))], check=False)
    assert len(list(store.tmp.iterdir())) == 2
    removed = store.clean_stale()
    assert len(removed) == 1 and live.path.exists()
    live.close()
    assert not any(store.tmp.iterdir())
