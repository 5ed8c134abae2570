#!/usr/bin/env bash
# A real Debian 12 guest, from Debian's own packages (as root): systemd, the cloud kernel,
# cloud-init (NoCloud only) and qemu-guest-agent, on ext4 without a partition table, booted
# by direct kernel boot.
#
#   tools/build-real-guest.sh [IMAGE_DIR]     default /var/lib/compute-agent/images
#
# Writes, in IMAGE_DIR:
#   debian-real.raw          the root filesystem (ext4, 2 GiB sparse): root=/dev/vda
#   debian-real-vmlinuz      its kernel
#   debian-real-initrd.img   its initramfs
#   debian-real.key          what it was built from (a hash of this script's inputs)
# Cached: nothing is done when debian-real.key matches the inputs (this file); a changed
# package list, hook or size builds it again (about a minute). --force rebuilds.
set -euo pipefail

IMAGE_DIR=${1:-/var/lib/compute-agent/images}
FORCE=
[ "$IMAGE_DIR" = --force ] && { IMAGE_DIR=/var/lib/compute-agent/images; FORCE=1; }
[ "${2:-}" = --force ] && FORCE=1
SUITE=bookworm
SIZE=2G
PACKAGES=systemd-sysv,udev,linux-image-cloud-amd64,qemu-guest-agent,cloud-init,openssh-server,ifupdown,isc-dhcp-client,iproute2,e2fsprogs,initramfs-tools,netbase

log() { printf '[build-real-guest] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "build-real-guest: run as root" >&2; exit 1; }

# The cache key: everything below that shapes the image is in this file.
key=$(sha256sum "$0" | cut -d' ' -f1)
if [ -z "$FORCE" ] && [ "$(cat "$IMAGE_DIR/debian-real.key" 2>/dev/null)" = "$key" ] &&
   [ -f "$IMAGE_DIR/debian-real.raw" ] && [ -f "$IMAGE_DIR/debian-real-vmlinuz" ] &&
   [ -f "$IMAGE_DIR/debian-real-initrd.img" ]; then
    log "cached: $IMAGE_DIR/debian-real.raw"
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
}

work=$(mktemp -d /var/tmp/real-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
started=$(date +%s)
log "mmdebstrap $SUITE -> $root"
# Hooks (run on the host, the root as $1):
# - the root filesystem is /dev/vda itself;
# - cloud-init looks at NoCloud only (its other datasources would probe the network for
#   metadata servers first), leaves the locale alone (minbase has no update-locale), makes
#   one SSH host key (ed25519), and skips what only costs boot time here (grub, the keys on
#   the console, e2scrub, the gettys of virtual terminals it has none of);
# - no machine id and no SSH host keys: systemd and cloud-init make them at the first boot of
#   each instance (else every instance of the image would share them).
mmdebstrap --variant=minbase --include="$PACKAGES" \
    --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
    --customize-hook='cat > "$1/etc/cloud/cloud.cfg.d/90-compute-agent.cfg" <<EOF
datasource_list: [ NoCloud, None ]
locale: false
ssh_genkeytypes: [ ed25519 ]
ssh: { emit_keys_to_console: false }
grub_dpkg: { enabled: false }
EOF' \
    --customize-hook='systemctl --root="$1" mask e2scrub_reap.service e2scrub_all.timer getty-static.service' \
    --customize-hook='printf "auto lo\niface lo inet loopback\n" > "$1/etc/network/interfaces"' \
    --customize-hook='truncate -s 0 "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    "$SUITE" "$root" >&2
kver=$(ls "$root/lib/modules" | head -1)
mkdir -p "$IMAGE_DIR"
cp "$root/boot/vmlinuz-$kver" "$IMAGE_DIR/debian-real-vmlinuz.tmp"
cp "$root/boot/initrd.img-$kver" "$IMAGE_DIR/debian-real-initrd.img.tmp"
rm -f "$IMAGE_DIR/debian-real.raw.tmp"
mkfs.ext4 -q -F -L debian-real -d "$root" "$IMAGE_DIR/debian-real.raw.tmp" "$SIZE" >&2
chmod 0644 "$IMAGE_DIR"/debian-real*.tmp
mv "$IMAGE_DIR/debian-real-vmlinuz.tmp" "$IMAGE_DIR/debian-real-vmlinuz"
mv "$IMAGE_DIR/debian-real-initrd.img.tmp" "$IMAGE_DIR/debian-real-initrd.img"
mv "$IMAGE_DIR/debian-real.raw.tmp" "$IMAGE_DIR/debian-real.raw"
echo "$key" >"$IMAGE_DIR/debian-real.key"
log "kernel $kver -> $IMAGE_DIR/debian-real.raw ($(( $(date +%s) - started )) s)"
