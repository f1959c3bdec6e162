"""provisioner: a bare-metal PXE appliance for immutable servers."""

__version__ = "0.1.0"
