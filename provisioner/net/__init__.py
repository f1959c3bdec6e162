"""Network protocol adapters: DHCP, TFTP."""
