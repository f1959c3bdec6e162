"""DHCPv4 for PXE: a wire codec, pure reply logic and a thin socket adapter.

codec -> options -> responder (pure) -> server (sockets). The lease store is
in provisioner.db.leases.
"""
