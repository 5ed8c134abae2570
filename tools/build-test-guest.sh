#!/usr/bin/env bash
# Build the tiny test guest: a Debian kernel plus a busybox initramfs whose /init prints a ready
# marker on ttyS0. Writes into the image directory (default /var/lib/compute-agent/images):
#   test-vmlinuz       Debian's cloud kernel (fast to boot under TCG)
#   test-initrd.img    the initramfs (busybox-static + virtio modules)
#   test-vmgenid-vmlinuz, test-vmgenid-initrd.img
#                      the same guest on Debian's generic kernel, which has the vmgenid driver
# The guest prints "COMPUTE-AGENT-GUEST-READY", then the block devices it sees ("guest-disk: vda 2048"),
# then idles. Kernel cmdline "ca.poweroff" makes it power itself off right after the marker; "ca.poweroff=once"
# does that only on its first boot from a disk (it writes a marker into /dev/vda first): a guest that powers itself
# off and then stays up when started again. The ACPI power button powers it off ("guest-acpi: power button"), as
# acpid does on a real distribution: libvirt's graceful shutdown and soft reboot work on it ("ca.noacpi": it
# ignores the button, as a guest without acpid or one that hangs does).
# Readiness: when its userspace is up it opens the virtio-serial port named org.qemu.guest_agent.0 (as
# qemu-guest-agent does on a real image): libvirt then emits its agent-lifecycle "connected" event, and it prints
# "guest-agent-port: open". "ca.noagent" never opens it (a guest that never becomes ready).
# Pool instances: a reader on the port org.compute-agent.identity.0 sets the clock from each line the host
# writes there, prints it as "guest-identity: LINE", answers {"ack": SEQ, "clock": SECONDS} on the port and
# prints 16 random bytes ("guest-random: HEX"). A change of VM generation id (a restore) shows as the kernel's
# "guest-kmsg: random: crng reseeded due to virtual machine fork".
# "ca.probe=P1,P2,..." makes it try TCP connections to the host side of user-mode networking
# (10.0.2.2, QEMU's alias of the host's 127.0.0.1) on those ports and print
# "guest-probe: 10.0.2.2:P open|closed" for each (the tests of guest isolation).
# "ca.flood=M" makes it write M MiB of text to its serial console, then "guest-flood: done" (the test of the
# console log's size cap).
# Idempotent: does nothing when both files exist at this script's GUEST_VERSION (--force rebuilds).
set -euo pipefail

IMAGE_DIR=${1:-/var/lib/compute-agent/images}
FORCE=${2:-}
[ "$IMAGE_DIR" = --force ] && { IMAGE_DIR=/var/lib/compute-agent/images; FORCE=--force; }
MARKER=COMPUTE-AGENT-GUEST-READY
GUEST_VERSION=11     # bump when /init changes: older builds are then rebuilt

if [ -s "$IMAGE_DIR/test-vmlinuz" ] && [ -s "$IMAGE_DIR/test-initrd.img" ] &&
   [ -s "$IMAGE_DIR/test-vmgenid-vmlinuz" ] && [ -s "$IMAGE_DIR/test-vmgenid-initrd.img" ] &&
   [ "$FORCE" != --force ] && [ "$(cat "$IMAGE_DIR/test-guest.version" 2>/dev/null)" = "$GUEST_VERSION" ]; then
    echo "[build-test-guest] present in $IMAGE_DIR"; exit 0
fi
command -v busybox >/dev/null && [ -f /bin/busybox ] || { echo "needs busybox-static (tools/setup-node.sh)" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"      # apt-get download fetches as _apt
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p initrd
cat >initrd/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net evdev button virtio_console cdrom isofs virtio-rng; do
    [ -f /lib/modules/\$m.ko ] && { insmod /lib/modules/\$m.ko || echo "guest-insmod-failed: \$m" >/dev/ttyS0; }
done
# The ACPI power button (libvirt's shutdown/reboot --mode acpi): any event on its input device powers off.
grep -q ca.noacpi /proc/cmdline || for e in /sys/class/input/event*; do
    if [ "\$(cat \$e/device/name 2>/dev/null)" = "Power Button" ]; then
        # Opened here, before the ready marker: a press from then on is queued, never lost.
        exec 4</dev/input/\$(basename \$e)
        (head -c 24 <&4 >/dev/null && echo "guest-acpi: power button" >/dev/ttyS0 && poweroff -f) &
    fi
done
# The VM generation id (vmgenid): when it changes (a restore from a saved spare) the kernel reseeds its RNG
# and logs it; print that as "guest-kmsg: MESSAGE". /dev/kmsg hands one record per read: cat, not read.
(cat /dev/kmsg | while read -r l; do
    case "\$l" in *"virtual machine fork"*|*vmgenid*) echo "guest-kmsg: \${l#*;}" >/dev/ttyS0 ;; esac
done) &
echo "$MARKER" >/dev/ttyS0
# Identity (pool instances): the guest learns who it is from the port named org.compute-agent.identity.0,
# one JSON line each time it starts or resets (or is restored from a saved spare) with the host's clock in
# "time": it sets its clock from it, prints "guest-identity: LINE" and answers on the same port
# {"ack": SEQ, "clock": SECONDS} (the agent calls it ready only then). Its reader starts before the agent
# port opens (so before a spare is saved). While the host side is closed a read returns at once (EOF): it
# tries again every 0.05 s. The answer forks once (date): what TCG makes slow is forks.
identity() {
    local q
    for q in /sys/class/virtio-ports/vport*; do
        if [ "\$(cat \$q/name 2>/dev/null)" = org.compute-agent.identity.0 ]; then
            (exec 5<>/dev/\$(basename \$q)
             date -d @0 +%s >/dev/null    # TCG translates code at its first run: not in the first answer
             while true; do
                if read -r line <&5; then
                    t=\${line#*\"time\": }; t=\${t%%[!0-9]*}
                    s=\${line#*\"seq\": }; s=\${s%%[!0-9]*}
                    if [ -n "\$t" ]; then c=\$(date -s "@\$t" +%s); else c=\$(date +%s); fi
                    [ -n "\$s" ] && echo "{\"ack\": \$s, \"clock\": \$c}" >&5
                    echo "guest-identity: \$line" >/dev/ttyS0
                    echo "guest-random: \$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')" >/dev/ttyS0
                else sleep 0.05; fi
             done) &
            return 0
        fi
    done
    return 1
}
# Ready: open the guest-agent port (and hold it open) once its device is there.
grep -q ca.noagent /proc/cmdline || (
    i=0
    while true; do        # as long as it takes: under a storm of TCG guests probing is slow
        for p in /sys/class/virtio-ports/vport*; do
            if [ "\$(cat \$p/name 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
                identity || echo "guest-identity: no port" >/dev/ttyS0
                exec 3<>/dev/\$(basename \$p)
                echo "guest-agent-port: open" >/dev/ttyS0
                while true; do sleep 3600; done
            fi
        done
        i=\$((i+1)); [ \$i = 100 ] && echo "guest-agent-port: not found yet" >/dev/ttyS0
        sleep 0.1
    done
) &
# Devices probe asynchronously (slowly under TCG): give them a few seconds before listing.
i=0; while [ \$i -lt 50 ] && ! ls /sys/block | grep -q '^vd' && ! ls /sys/class/net | grep -qv '^lo\$'; do sleep 0.1; i=\$((i+1)); done
sleep 0.5
for d in /sys/block/vd*; do
    [ -e "\$d" ] && echo "guest-disk: \$(basename \$d) \$(cat \$d/size)" >/dev/ttyS0
done
for n in /sys/class/net/*; do
    [ "\$(basename \$n)" = lo ] || echo "guest-nic: \$(basename \$n) \$(cat \$n/address)" >/dev/ttyS0
done
# A NoCloud seed (a disk labelled cidata): print its files line by line, as cloud-init would
# read them ("guest-seed FILE: LINE"), then "guest-seed: done".
seed=\$(findfs LABEL=cidata 2>/dev/null)
if [ -n "\$seed" ] && mkdir -p /seed && mount -t iso9660 -o ro "\$seed" /seed; then
    echo "guest-seed: \$(basename \$seed) cidata" >/dev/ttyS0
    for f in meta-data user-data network-config; do
        [ -f /seed/\$f ] && sed "s/^/guest-seed \$f: /" /seed/\$f >/dev/ttyS0
    done
    echo "guest-seed: done" >/dev/ttyS0
fi
probe=\$(sed -n 's/.*ca\.probe=\([0-9,]*\).*/\1/p' /proc/cmdline)
if [ -n "\$probe" ]; then
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
    for p in \$(echo "\$probe" | tr , ' '); do
        if nc -w 3 10.0.2.2 "\$p" -e /bin/true 2>/dev/null; then r=open; else r=closed; fi
        echo "guest-probe: 10.0.2.2:\$p \$r" >/dev/ttyS0
    done
    echo "guest-probe: done" >/dev/ttyS0
fi
flood=\$(sed -n 's/.*ca\.flood=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "\$flood" ]; then
    yes 'guest-flood: a guest that writes its console as fast as it can' | head -c \$((flood * 1048576)) >/dev/ttyS0
    echo "guest-flood: done" >/dev/ttyS0
fi
if grep -q 'ca.poweroff=once' /proc/cmdline; then
    if [ "\$(head -c 13 /dev/vda 2>/dev/null)" != CA-POWEREDOFF ] && [ -b /dev/vda ]; then
        printf CA-POWEREDOFF | dd of=/dev/vda conv=notrunc 2>/dev/null; sync
        echo "guest-poweroff: first boot" >/dev/ttyS0; poweroff -f
    fi
    echo "guest-poweroff: not again" >/dev/ttyS0
elif grep -q ca.poweroff /proc/cmdline; then poweroff -f; fi
while true; do sleep 3600; done
INIT
chmod +x initrd/init

MODULES="drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_modern_dev.ko
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko
         net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko
         drivers/input/evdev.ko drivers/acpi/button.ko drivers/char/virtio_console.ko
         drivers/cdrom/cdrom.ko fs/isofs/isofs.ko drivers/char/hw_random/virtio-rng.ko"

# build PREFIX META-PACKAGE [vmgenid]: PREFIX-vmlinuz and PREFIX-initrd.img from the kernel the meta
# package depends on (only that versioned package is fetched, and only the kernel and MODULES unpacked).
build() {
    local prefix=$1 meta=$2 need=${3:-} kpkg kver mods m f
    mkdir "$work/$prefix" && cd "$work/$prefix"
    kpkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/{print $2; exit}')
    [ -n "$kpkg" ] || { echo "cannot resolve $meta (apt-get update?)" >&2; exit 1; }
    apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null
    mkdir root
    dpkg-deb --fsys-tarfile ./*.deb | tar -x -C root --wildcards './boot/vmlinuz-*' './boot/config-*' \
        $(for m in $MODULES; do echo "./lib/modules/*/kernel/$m*"; done)
    if [ "$need" = vmgenid ] && ! grep -q '^CONFIG_VMGENID=y' root/boot/config-*; then
        echo "$kpkg has no built-in vmgenid driver" >&2; exit 1
    fi
    kver=$(ls root/lib/modules)
    mods=root/lib/modules/$kver/kernel
    mkdir -p initrd/{bin,dev,proc,sys,lib/modules}
    cp /bin/busybox initrd/bin/busybox
    cp "$work/initrd/init" initrd/init
    for m in $MODULES; do
        for f in "$mods/$m" "$mods/$m.xz"; do
            if [ -f "$f" ]; then
                case "$f" in *.xz) xz -dc "$f" >"initrd/lib/modules/$(basename "$m")" ;; *) cp "$f" initrd/lib/modules/ ;; esac
            fi
        done
    done
    (cd initrd && find . | cpio -o -H newc --quiet | gzip -1) >"$IMAGE_DIR/$prefix-initrd.img.tmp"
    cp root/boot/vmlinuz-"$kver" "$IMAGE_DIR/$prefix-vmlinuz.tmp"
    mv "$IMAGE_DIR/$prefix-initrd.img.tmp" "$IMAGE_DIR/$prefix-initrd.img"
    mv "$IMAGE_DIR/$prefix-vmlinuz.tmp" "$IMAGE_DIR/$prefix-vmlinuz"
    echo "[build-test-guest] $prefix: kernel $kver -> $IMAGE_DIR"
    cd "$work"
}
mkdir -p "$IMAGE_DIR"
# The cloud kernel boots in half the time under TCG; the generic one has the vmgenid driver built in (the
# cloud one has none), so a guest restored from a saved spare sees its new VM generation id and reseeds.
build test linux-image-cloud-amd64
build test-vmgenid linux-image-amd64 vmgenid
echo "$GUEST_VERSION" >"$IMAGE_DIR/test-guest.version"
