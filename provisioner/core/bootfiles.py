"""The iPXE binaries the appliance hands to firmware, by client
architecture (option 93, RFC 4578 and IANA's Processor Architecture Types),
and where each comes from in the settings. One table for DHCP, TFTP and HTTP.

Debian's ipxe package builds x86 only, and its EFI binaries are x86-64: a
client of any other architecture (EFI IA32 = 6, ARM = 10/11, HTTP boot
15/18/19) is offered nothing rather than a binary it cannot run."""

BIOS_FILE = "undionly.kpxe"  # PXE on BIOS: chainloads over the NIC's UNDI
EFI_FILE = "snponly.efi"  # PXE on x86-64 UEFI: runs on the firmware's network driver
HTTP_FILE = "ipxe.efi"  # UEFI HTTP Boot x86-64: has its own drivers

# Boot file name -> the [ipxe] setting that names its source.
BOOT_FILES = {BIOS_FILE: "bios", EFI_FILE: "efi", HTTP_FILE: "efi_fallback"}

# Option 93 value -> TFTP boot file. 7 and 9 are both x86-64 UEFI (RFC 4578
# swapped them; see its errata), so both are accepted. A PXE client that
# sends no option 93 is taken for BIOS, as the PXE spec's default.
PXE_ARCH_FILES = {None: BIOS_FILE, 0: BIOS_FILE, 7: EFI_FILE, 9: EFI_FILE}

# UEFI HTTP Boot architecture -> file served over HTTP.
HTTP_ARCH_FILES = {None: HTTP_FILE, 16: HTTP_FILE}
