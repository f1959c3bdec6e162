"""The QEMU lab: real firmware PXE-booting against the appliance, entirely
inside network namespaces that this package creates and removes.

Nothing here ever touches the root namespace's interfaces: the bridge, the
taps and the veth pairs are created inside the lab namespaces, so no frame
from a lab machine can reach the host's real network.
"""

from provisioner.lab.appliance import Appliance, LabConfig, write_config
from provisioner.lab.netns import LabError, LabNetwork, SiteNetwork
from provisioner.lab.qemu import DiskSpec, Machine, MachineSpec

__all__ = [
    "Appliance",
    "DiskSpec",
    "LabConfig",
    "LabError",
    "LabNetwork",
    "Machine",
    "MachineSpec",
    "SiteNetwork",
    "write_config",
]
