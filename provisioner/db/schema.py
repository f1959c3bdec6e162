"""The schema as an ordered list of migrations; each runs in a transaction
with its record. Never edit an applied migration: add a new one."""

from sqlite_utils import Database, Migrations

migrations = Migrations("provisioner")


@migrations()
def m001_initial(db: Database) -> None:
    db["hosts"].create(
        {
            "id": int,
            "name": str,
            "state": str,  # discovered | ready | deploying | deployed | ...
            "labels": str,  # JSON object
            "hardware": str,  # JSON object, as reported by discovery
            "profile": str,
            "ip": str,  # reserved address for full DHCP, optional
            "created": float,
            "updated": float,
        },
        pk="id",
        not_null={"name", "state", "labels", "hardware", "created", "updated"},
        defaults={"labels": "{}", "hardware": "{}"},
    )
    db["hosts"].create_index(["name"], unique=True)
    db["host_macs"].create(
        {"mac": str, "host_id": int},
        pk="mac",
        foreign_keys=[("host_id", "hosts", "id")],
    )
    db["host_macs"].create_index(["host_id"])

    db["leases"].create(
        {
            "mac": str,
            "ip": str,
            "expires": float,  # epoch seconds; 0 = released
            "hostname": str,
            "client_id": str,
            "updated": float,
        },
        pk="mac",
        not_null={"ip", "expires", "updated"},
    )
    db["leases"].create_index(["ip"], unique=True)
    # Addresses a client declined (RFC 2131 DHCPDECLINE): not handed out again
    # until `until`.
    db["declined"].create({"ip": str, "mac": str, "until": float}, pk="ip")

    db["events"].create(
        {
            "id": int,
            "ts": float,
            "kind": str,
            "host": str,
            "mac": str,
            "actor": str,
            "message": str,
            "data": str,  # JSON object
        },
        pk="id",
        not_null={"ts", "kind", "message"},
    )
    db["events"].create_index(["host", "id"])
    db["events"].create_index(["mac", "id"])

    db["boot_tokens"].create(
        {
            "token": str,
            "mac": str,
            "purpose": str,  # discover | deploy
            "issued": float,
            "expires": float,
            "used": float,
        },
        pk="token",
        not_null={"mac", "purpose", "issued", "expires"},
    )


@migrations()
def m002_images(db: Database) -> None:
    # name@version -> manifest digest; immutable once inserted.
    db["images"].create(
        {
            "name": str,
            "version": str,
            "digest": str,  # sha256 of manifest.json
            "created": float,  # from the manifest (SOURCE_DATE_EPOCH)
            "published": float,
            "actor": str,
            "source": str,  # definition | import
            "size": int,  # sum of the artifacts
        },
        pk=("name", "version"),
        not_null={"digest", "created", "published", "source", "size"},
    )
    db["images"].create_index(["digest"])
    # Which blobs an image is made of, manifest included, so that serving,
    # remove and gc can ask by digest.
    db["image_blobs"].create(
        {"name": str, "version": str, "artifact": str, "digest": str, "size": int},
        pk=("name", "version", "artifact"),
        not_null={"digest", "size"},
    )
    db["image_blobs"].create_index(["digest"])
    db["channels"].create(
        {"name": str, "label": str, "version": str, "updated": float, "actor": str},
        pk=("name", "label"),
        not_null={"version", "updated"},
    )
    db["channel_moves"].create(
        {
            "id": int, "name": str, "label": str, "from_version": str, "to_version": str,
            "ts": float, "actor": str,
        },
        pk="id",
        not_null={"name", "label", "to_version", "ts"},
    )
    db["channel_moves"].create_index(["name", "label", "id"])
    # The image a host should run (NAME@VERSION or NAME@CHANNEL).
    db["hosts"].add_column("image", str)
