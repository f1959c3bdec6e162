#!/bin/sh
# Recapture the golden DHCP packets in this directory. Run as root.
#
# Everything happens inside two network namespaces made here and deleted on
# exit: "srv" holds a bridge with dnsmasq answering (so that clients go on to
# send REQUESTs), a tap for QEMU and one end of a veth; "cli" holds the other
# end of the veth for busybox udhcpc. No packet reaches the host's interfaces.
# tcpdump writes one pcap; split_pcap.py turns it into one .hex file per packet.
set -eu
OUT=$(cd "$(dirname "$0")" && pwd)
SFX=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
S=gcap-s-$SFX; C=gcap-c-$SFX
TMP=$(mktemp -d)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 1
    ip netns del "$S" 2>/dev/null || true
    ip netns del "$C" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link add br0 type bridge
ip -n "$S" link set br0 up
ip -n "$S" addr add 10.77.0.1/24 dev br0
ip -n "$S" link add vs type veth peer name vc netns "$C"
ip -n "$S" link set vs master br0 up
ip -n "$C" link set vc address 52:54:00:aa:00:01 up
ip -n "$S" tuntap add tap0 mode tap
ip -n "$S" link set tap0 master br0 up
ip netns exec "$S" tcpdump -U -n -i br0 -w "$TMP/all.pcap" 'udp and (port 67 or port 68 or port 4011)' 2>/dev/null &
PIDS="$PIDS $!"
sleep 1
# dnsmasq tags PXE clients and offers a bootfile, so firmware proceeds to REQUEST.
ip netns exec "$S" /usr/sbin/dnsmasq --no-daemon --conf-file=/dev/null --port=0 \
    --interface=br0 --bind-interfaces --dhcp-range=10.77.0.100,10.77.0.150,1h \
    --dhcp-leasefile="$TMP/leases" --dhcp-boot=undionly.kpxe,,10.77.0.1 \
    --pid-file="$TMP/dnsmasq.pid" 2>"$TMP/dnsmasq.log" &
PIDS="$PIDS $!"
sleep 1
# busybox udhcpc: plain DHCP client (no PXE options), no script side effects.
ip netns exec "$C" busybox udhcpc -i vc -n -q -t 3 -T 2 -s /bin/true -x hostname:golden -V busybox-golden || true
# QEMU BIOS + iPXE ROM (virtio) with PXE first: iPXE's own DHCP.
# (-nodefaults matters: with QEMU's default devices iPXE gave up at once.)
timeout 40 ip netns exec "$S" qemu-system-x86_64 -machine pc,graphics=off -accel tcg -m 512 -nodefaults \
    -display none -boot order=n,menu=off -no-reboot -monitor none -serial file:"$TMP/bios.log" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:bb:00:02,bootindex=1 >/dev/null 2>&1 || true
# QEMU OVMF (UEFI x64): EDK2's own PXE client (arch 7) on top of iPXE's SNP driver.
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$TMP/vars.fd"
timeout 120 ip netns exec "$S" qemu-system-x86_64 -machine q35,graphics=off -accel tcg -m 512 -nodefaults \
    -display none -no-reboot -monitor none -serial file:"$TMP/uefi.log" \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$TMP/vars.fd" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:cc:00:03,bootindex=1 >/dev/null 2>&1 || true
sleep 1
cp "$TMP/all.pcap" "$OUT/capture.pcap"
