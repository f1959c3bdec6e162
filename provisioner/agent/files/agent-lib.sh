# shellcheck shell=sh
# Functions of the provisioner agent, sourced by /init (busybox ash).
#
# Everything here reads the machine through SYSFS, PROCFS and DEVDIR so that
# tests can point the inventory at a fake tree on the build host.
: "${SYSFS:=/sys}" "${PROCFS:=/proc}" "${DEVDIR:=/dev}"

say() { echo "provisioner-agent: $*"; }

# Console marker the tests and operators follow in the serial log.
phase() { say "phase=$1${2:+ $2}"; }

trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }

# First line of a sysfs attribute, trimmed; empty when absent or unreadable
# (some attributes, e.g. carrier of a down link, fail on read).
attr() { [ -r "$1" ] && head -n 1 "$1" 2>/dev/null | trim; }

# A JSON string literal. Control characters become spaces or vanish, bytes
# above ASCII are dropped (sysfs strings are ASCII; a stray byte must not
# make the whole report invalid UTF-8), then \ and " are escaped.
json_string() {
	printf '"%s"' "$(printf '%s' "$1" | tr '\t\n\r' '   ' | tr -d '\000-\037\177-\377' |
		sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

# Like json_string, but null for an empty value (unknown facts are null).
json_str() {
	if [ -z "$1" ]; then printf 'null'; else json_string "$1"; fi
}

json_bool() { if [ "$1" = 1 ] || [ "$1" = true ]; then printf true; else printf false; fi; }

json_num() {
	case "$1" in '' | *[!0-9]*) printf null ;; *) printf '%s' "$1" ;; esac
}

# Lines on stdin -> JSON array of strings (empty lines skipped).
json_lines() {
	_sep=''
	printf '['
	while IFS= read -r _line; do
		[ -n "$_line" ] || continue
		printf '%s%s' "$_sep" "$(json_string "$_line")"
		_sep=','
	done
	printf ']'
}

# BOOTIF=01-52-54-00-12-34-56 (pxelinux/iPXE form) -> 52:54:00:12:34:56
bootif_mac() {
	printf '%s' "${1#01-}" | tr 'A-F-' 'a-f:'
}

# Path components of a sysfs device path, one per line.
path_parts() { printf '%s\n' "$1" | tr '/' '\n'; }

disk_serial() {
	_b="$SYSFS/block/$1"
	for _f in "$_b/serial" "$_b/device/serial"; do
		_v=$(attr "$_f")
		if [ -n "$_v" ]; then printf '%s' "$_v"; return; fi
	done
	# SCSI/SATA: VPD page 0x80 is a 4-byte header followed by the serial.
	if [ -r "$_b/device/vpd_pg80" ]; then
		tail -c +5 "$_b/device/vpd_pg80" 2>/dev/null | tr -d '\000' | trim
	fi
}

# World wide name: SCSI "naa.5000..." in lsblk's 0x5000... form; NVMe
# eui./nvme. identifiers as the kernel gives them. A "t10." identifier is
# vendor + model + serial padded with spaces, not a world wide name: null.
disk_wwn() {
	for _f in "$SYSFS/block/$1/wwid" "$SYSFS/block/$1/device/wwid"; do
		_v=$(attr "$_f")
		if [ -n "$_v" ]; then
			case "$_v" in
			naa.*) printf '0x%s' "${_v#naa.}" ;;
			t10.*) ;;
			*) printf '%s' "$_v" ;;
			esac
			return
		fi
	done
}

# $1 name, $2 resolved sysfs path of /sys/block/NAME
disk_transport() {
	case "$1" in nvme*) printf nvme; return ;; esac
	case "$2" in
	*/usb[0-9]*) printf usb ;;
	*/virtio[0-9]*) printf virtio ;;
	*/ata[0-9]*) printf sata ;;
	*/end_device-*) printf sas ;;
	*/rport-*) printf fc ;;
	*/session[0-9]*) printf iscsi ;;
	*/mmc_host/*) printf mmc ;;
	esac
}

# udev's /dev/disk/by-path name when udev made one; without udev, the same
# idea as udev's path_id for the common cases: the PCI address of the
# controller plus nvme namespace, ATA port or SCSI channel:target:lun.
disk_by_path() {
	for _l in "$DEVDIR"/disk/by-path/*; do
		[ -e "$_l" ] || continue
		if [ "$(readlink -f "$_l")" = "$DEVDIR/$1" ]; then printf '%s' "${_l##*/}"; return; fi
	done
	_pci=$(path_parts "$2" | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | tail -n 1)
	[ -n "$_pci" ] || return 0
	_out="pci-$_pci"
	_port=$(path_parts "$2" | sed -n 's/^ata\([0-9][0-9]*\)$/\1/p' | tail -n 1)
	_hctl=$(path_parts "$2" | grep -E '^[0-9]+:[0-9]+:[0-9]+:[0-9]+$' | tail -n 1)
	case "$1" in
	nvme*)
		_ns=$(attr "$SYSFS/block/$1/nsid")
		[ -n "$_ns" ] && _out="$_out-nvme-$_ns"
		;;
	*)
		if [ -n "$_port" ]; then
			_out="$_out-ata-$_port"
		elif [ -n "$_hctl" ]; then
			_out="$_out-scsi-0:${_hctl#*:}"
		fi
		;;
	esac
	printf '%s' "$_out"
}

# Every signature wipefs finds on the disk and on its partitions, in order,
# each once: the facts that stop anything from formatting a used disk.
disk_signatures() {
	_parts=''
	for _p in "$SYSFS/block/$1/$1"*; do
		[ -e "$_p/partition" ] && _parts="$_parts $DEVDIR/${_p##*/}"
	done
	# shellcheck disable=SC2086 # word splitting of the partition list is wanted
	wipefs -i -O TYPE "$DEVDIR/$1" $_parts 2>/dev/null | trim | awk '!seen[$0]++' | json_lines
}

# Block devices that are disks: backed by a device, not loop/ram/optical.
disk_names() {
	for _b in "$SYSFS"/block/*; do
		_n=${_b##*/}
		case "$_n" in loop* | ram* | zram* | sr* | fd* | nbd*) continue ;; esac
		[ -e "$_b/device" ] && printf '%s\n' "$_n"
	done
}

inventory_disks() {
	_sep=''
	printf '['
	for _n in $(disk_names); do
		_b="$SYSFS/block/$_n"
		_path=$(readlink -f "$_b")
		_sectors=$(attr "$_b/size")
		printf '%s{"name":%s,"size_bytes":%s,"serial":%s,"wwn":%s,"model":%s,"vendor":%s,' \
			"$_sep" "$(json_string "$_n")" "$((${_sectors:-0} * 512))" \
			"$(json_str "$(disk_serial "$_n")")" "$(json_str "$(disk_wwn "$_n")")" \
			"$(json_str "$(attr "$_b/device/model")")" "$(json_str "$(attr "$_b/device/vendor")")"
		printf '"by_path":%s,"rotational":%s,"removable":%s,"readonly":%s,"transport":%s,"signatures":%s}' \
			"$(json_str "$(disk_by_path "$_n" "$_path")")" "$(json_bool "$(attr "$_b/queue/rotational")")" \
			"$(json_bool "$(attr "$_b/removable")")" "$(json_bool "$(attr "$_b/ro")")" \
			"$(json_str "$(disk_transport "$_n" "$_path")")" "$(disk_signatures "$_n")"
		_sep=','
	done
	printf ']'
}

# Network interfaces backed by hardware (not lo, bridges or tunnels).
nic_names() {
	for _c in "$SYSFS"/class/net/*; do
		[ -e "$_c/device" ] && printf '%s\n' "${_c##*/}"
	done
}

nic_driver() {
	_d=$(readlink -f "$SYSFS/class/net/$1/device/driver" 2>/dev/null)
	[ -n "$_d" ] && printf '%s' "${_d##*/}"
}

# $1 = boot MAC (lower case, colons)
inventory_nics() {
	_sep=''
	printf '['
	for _n in $(nic_names); do
		_c="$SYSFS/class/net/$_n"
		_mac=$(attr "$_c/address" | tr 'A-F' 'a-f')
		_speed=$(attr "$_c/speed")
		_boot=0
		[ -n "$1" ] && [ "$_mac" = "$1" ] && _boot=1
		printf '%s{"name":%s,"mac":%s,"driver":%s,"link":%s,"speed_mbps":%s,"boot":%s}' \
			"$_sep" "$(json_string "$_n")" "$(json_str "$_mac")" "$(json_str "$(nic_driver "$_n")")" \
			"$(json_bool "$(attr "$_c/carrier")")" "$(json_num "$_speed")" "$(json_bool "$_boot")"
		_sep=','
	done
	printf ']'
}

# Installed memory. MemTotal leaves out what the firmware and kernel keep, so
# a 1 GiB machine shows ~980 MiB; the online memory blocks add up to what is
# installed. MemTotal remains the fallback when the kernel lacks them.
memory_bytes() {
	_bs=$(attr "$SYSFS/devices/system/memory/block_size_bytes")
	_count=0
	if [ -n "$_bs" ]; then
		for _m in "$SYSFS"/devices/system/memory/memory[0-9]*; do
			[ "$(attr "$_m/online")" = 1 ] && _count=$((_count + 1))
		done
	fi
	if [ "$_count" -gt 0 ]; then
		printf '%s' "$((_count * 0x$_bs))"
	else
		_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' "$PROCFS/meminfo")
		printf '%s' "$((${_kb:-0} * 1024))"
	fi
}

inventory_cpu() {
	_count=$(grep -c '^processor' "$PROCFS/cpuinfo")
	_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' "$PROCFS/cpuinfo" | head -n 1)
	printf '{"count":%s,"model":%s}' "$(json_num "$_count")" "$(json_str "$_model")"
}

inventory_system() {
	_d="$SYSFS/class/dmi/id"
	printf '{"uuid":%s,"vendor":%s,"product":%s,"serial":%s}' \
		"$(json_str "$(attr "$_d/product_uuid" | tr 'A-F' 'a-f')")" "$(json_str "$(attr "$_d/sys_vendor")")" \
		"$(json_str "$(attr "$_d/product_name")")" "$(json_str "$(attr "$_d/product_serial")")"
}

firmware_type() {
	if [ -d "$SYSFS/firmware/efi" ]; then printf uefi; else printf bios; fi
}

# The HARDWARE object of docs/contracts.md. $1 = boot MAC, $2 = kernel release.
hardware_json() {
	printf '{"disks":%s,"nics":%s,"memory_bytes":%s,"cpu":%s,"system":%s,"firmware":%s,"kernel":%s}' \
		"$(inventory_disks)" "$(inventory_nics "$1")" "$(memory_bytes)" "$(inventory_cpu)" \
		"$(inventory_system)" "$(json_string "$(firmware_type)")" "$(json_str "$2")"
}
