#!/bin/sh
# setup.sh OUTDIR — build the tiny test guest used by the hook sidecar's real-QEMU tests.
#
# OUTDIR (default: bin/guest at the repository root) receives:
#   vmlinux            Debian's cloud kernel as an ELF (booted with PVH by qemu -kernel, the fastest path under TCG)
#   initramfs.cpio.gz  static busybox + /init, which runs `action=reboot|poweroff|hang` from /proc/cmdline
#   kernel-version     the Debian package the kernel came from
#   .complete          stamp; when present and matching this script, nothing is done
#
# Missing Debian packages are installed with apt-get (needs root): qemu-system-x86, busybox-static, cpio, lz4,
# binutils, and for the libvirt tier libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients
# (set RUNPOLICY_NO_LIBVIRT=1 to skip those three). Nothing binary is committed to the repository.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/bin/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

stamp=$(cat "$0" | sha256sum | cut -d' ' -f1)

packages="qemu-system-x86 busybox-static cpio lz4 binutils xz-utils"
if [ "${RUNPOLICY_NO_LIBVIRT:-}" != 1 ]; then
	packages="$packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
fi
missing=""
for p in $packages; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	echo "setup.sh: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
fi

if [ -f "$out/.complete" ] && [ "$(cat "$out/.complete")" = "$stamp" ] &&
	[ -s "$out/vmlinux" ] && [ -s "$out/initramfs.cpio.gz" ]; then
	echo "setup.sh: $out is complete"
	exit 0
fi
rm -f "$out/.complete"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- kernel: resolve the ABI name (it changes with every Debian point release), download, unpack, extract the ELF.
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$pkg" ]; then
	echo "setup.sh: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2
	exit 1
fi
(cd "$work" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' || true)
deb=$(ls "$work"/*.deb 2>/dev/null | head -n1)
if [ -z "$deb" ]; then
	echo "setup.sh: apt-get download $pkg failed" >&2
	exit 1
fi
mkdir "$work/deb"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/deb" --wildcards './boot/vmlinuz-*'
vmlinuz=$(ls "$work"/deb/boot/vmlinuz-* | head -n1)
"$here/extract-vmlinux.sh" "$vmlinuz" "$work/vmlinux"
mv "$work/vmlinux" "$out/vmlinux"
echo "$pkg" >"$out/kernel-version"

# --- initramfs: static busybox and an /init driven by the kernel command line.
ird="$work/initramfs"
mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev"
cp /bin/busybox "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
cp "$here/init" "$ird/init"
chmod 0755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9 >"$out/initramfs.cpio.gz")

echo "$stamp" >"$out/.complete"
echo "setup.sh: guest ready in $out ($pkg)"
