"""Publishing, channels, remove, gc and verify through the service layer,
with small stand-in artifacts (the real builds are integration tests)."""

import os

import pytest

from provisioner.db import open_db
from provisioner.errors import Conflict, InvalidInput, NotFound
from provisioner.images.manifest import ImageManifest
from provisioner.service import Service
from provisioner.settings import parse


@pytest.fixture
def svc(tmp_path):
    settings = parse({"state_dir": str(tmp_path), "network": {"interface": "br0", "dhcp": "proxy"}})
    return Service(settings, open_db(settings.db_path))


def publish(svc, version="1.0.0", content=b"rootfs", name="tiny", source_sha="a" * 64, actor="alice"):
    with svc.image_store().staging() as st:
        files = {}
        for artifact, data in (("kernel", b"kernel"), ("rootfs.squashfs", content), ("modules.cpio", b"mods")):
            files[artifact] = st.path / artifact
            files[artifact].write_bytes(data)
        m = ImageManifest(name=name, version=version, created=1700000000, artifacts=(), kernel_version="6.1",
                          source={"kind": "definition", "sha256": source_sha})
        return svc.publish_image(st, m, files, actor=actor)


def test_publish_then_show_and_list(svc):
    p = publish(svc)
    assert p.new
    doc = svc.show_image("tiny@1.0.0")
    assert doc["digest"] == f"sha256:{p.image.digest}"
    assert doc["artifacts"]["rootfs.squashfs"]["size"] == 6
    assert svc.image_store().read(p.image.digest) == p.manifest.canonical()
    [row] = svc.list_images()
    assert row["name"] == "tiny" and row["size"] == len(b"kernel" + b"rootfs" + b"mods")
    assert [e.kind for e in svc.events()] == ["image.published"]


def test_same_content_again_is_a_no_op_other_content_refused_with_both_digests(svc):
    first = publish(svc)
    again = publish(svc)
    assert not again.new and again.image.digest == first.image.digest
    with pytest.raises(Conflict) as exc:
        publish(svc, content=b"changed")
    msg = exc.value.message
    assert first.image.digest in msg and "sha256:" in msg.split(first.image.digest)[1]
    assert "(rootfs.squashfs differ)" in msg
    # The refused content left no blob behind.
    store = svc.image_store()
    referenced = {r[0] for r in svc.db.execute("select digest from image_blobs")}
    assert set(store.all_blobs()) == referenced


def test_early_check_refuses_another_definition(svc):
    publish(svc)
    svc.check_publishable("tiny", "1.0.0", {"kind": "definition", "sha256": "a" * 64})
    svc.check_publishable("tiny", "2.0.0", {"kind": "definition", "sha256": "b" * 64})
    with pytest.raises(Conflict, match="b" * 64):
        svc.check_publishable("tiny", "1.0.0", {"kind": "definition", "sha256": "b" * 64})


def test_channels_promote_rollback_and_history(svc):
    publish(svc, "1.0.0")
    publish(svc, "1.1.0", content=b"v2")
    assert svc.promote_image("tiny@1.0.0", "stable", actor="alice")["from"] is None
    assert svc.resolve_image("tiny@stable").version == "1.0.0"
    assert svc.promote_image("tiny@1.1.0", "stable", actor="bob") == {
        "name": "tiny", "label": "stable", "from": "1.0.0", "to": "1.1.0"}
    assert svc.show_image("tiny@stable")["version"] == "1.1.0"
    assert svc.rollback_channel("tiny@stable", actor="carol")["to"] == "1.0.0"
    history = svc.channel_history("tiny@stable")
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in history] == [
        ("1.1.0", "1.0.0", "carol"), ("1.0.0", "1.1.0", "bob"), (None, "1.0.0", "alice")]
    moves = [e for e in svc.events() if e.kind == "image.channel"]
    assert [e.actor for e in moves] == ["alice", "bob", "carol"] and all(e.ts for e in moves)
    # A channel can follow another channel's current version.
    svc.promote_image("tiny@stable", "canary")
    assert svc.resolve_image("tiny@canary").version == "1.0.0"
    with pytest.raises(InvalidInput, match="channel"):
        svc.promote_image("tiny@1.0.0", "1beta")
    with pytest.raises(NotFound, match="no image tiny@9"):
        svc.promote_image("tiny@9", "stable")
    with pytest.raises(NotFound, match="no channel"):
        svc.rollback_channel("tiny@nightly")


def test_remove_refuses_images_in_use(svc):
    publish(svc, "1.0.0")
    publish(svc, "1.1.0", content=b"v2")
    svc.promote_image("tiny@1.0.0", "stable")
    with pytest.raises(Conflict, match="channel tiny@stable"):
        svc.remove_image("tiny@1.0.0")
    svc.add_host("52:54:00:00:00:01", "web1", image="tiny@1.1.0")
    with pytest.raises(Conflict, match="used by host web1"):
        svc.remove_image("tiny@1.1.0")
    svc.set_host_image("web1", "tiny@stable")
    svc.remove_image("tiny@1.1.0")
    with pytest.raises(InvalidInput, match="is a channel"):
        svc.remove_image("tiny@stable")
    with pytest.raises(NotFound):
        svc.add_host("52:54:00:00:00:02", "web2", image="tiny@9.9")


def test_gc_frees_only_unreferenced_blobs(svc):
    a = publish(svc, "1.0.0", content=b"shared-kernel-and-this")
    publish(svc, "1.1.0", content=b"v2")
    store = svc.image_store()
    before = set(store.all_blobs())
    svc.remove_image("tiny@1.0.0")
    result = svc.gc_images()
    # kernel and modules.cpio are shared with 1.1.0 and stay.
    assert set(result["blobs"]) == {a.manifest.artifact("rootfs.squashfs").sha256, a.image.digest}
    assert set(store.all_blobs()) == before - set(result["blobs"])
    assert svc.verify_image("tiny@1.1.0")[1] == []


def test_verify_catches_a_flipped_bit_and_a_missing_blob(svc):
    p = publish(svc)
    path = svc.image_store().path(p.manifest.artifact("rootfs.squashfs").sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[2] ^= 0x01
    path.write_bytes(bytes(data))
    row, problems = svc.verify_image("tiny@1.0.0")
    assert [p.artifact for p in problems] == ["rootfs.squashfs"]
    assert "expected sha256:" in str(problems[0])
    svc.image_store().path(p.manifest.artifact("kernel").sha256).unlink()
    assert {p.artifact for p in svc.verify_image("tiny@1.0.0")[1]} == {"kernel", "rootfs.squashfs"}
    assert any(e.kind == "image.corrupt" for e in svc.events())


def test_gc_waits_for_a_publisher_between_ingest_and_commit(svc, monkeypatch):
    """A blob ingested but not yet referenced must survive a concurrent gc."""
    import threading

    from provisioner.images.store import Store

    ingested, release = threading.Event(), threading.Event()
    real_add_bytes = Store.add_bytes

    def slow_add_bytes(self, *args, **kw):
        # The artifacts are in blobs/ now; nothing refers to them yet and no
        # database transaction is open.
        ingested.set()
        assert release.wait(10)
        return real_add_bytes(self, *args, **kw)

    monkeypatch.setattr(Store, "add_bytes", slow_add_bytes)
    worker_svc = Service(svc.settings, open_db(svc.settings.db_path))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("p", publish(worker_svc)))
    t.start()
    assert ingested.wait(10)
    gc_done = threading.Event()
    g = threading.Thread(target=lambda: (svc.gc_images(), gc_done.set()))
    g.start()
    assert not gc_done.wait(0.5), "gc ran while a publish was between ingest and commit"
    release.set()
    t.join(10)
    g.join(10)
    assert gc_done.is_set() and result["p"].new
    assert svc.verify_image("tiny@1.0.0")[1] == []
