"""Network adapters: DHCP, TFTP and the provisioning interface."""
