#!/usr/bin/env bash
# Builds KubeVirt's own components from kubevirt.io/kubevirt at KUBEVIRT_VERSION for the test cluster: the real
# virt-controller and virt-api, and kubevirt-manifests (test/kubevirt/build/manifests), which writes what
# virt-operator would create (CRDs, RBAC, certificates, KubeVirt CR, APIService, webhooks) with KubeVirt's own
# generator code. The result goes into bin/kubevirt/$KUBEVIRT_VERSION/ and is skipped when present.
#
#   test/kubevirt/build.sh                                  # prints the binaries' dir on stdout
#   COMPONENTS="virt-controller virt-api" test/kubevirt/build.sh
#
# Version: the newest that builds from the Go module proxy alone. v1.9.0 was tried (2026-12-01, with this script:
# KUBEVIRT_VERSION=v1.9.0) and does not: `go mod tidy` fails in 23 s because pkg/controller imports
# kubevirt.io/virt-template-{api,client-go} v0.2.0, whose zips the proxy refuses ("403 Forbidden, This module
# version is not available"; v0.2.0-v0.2.2 likewise, v0.1.7 is served but lacks core/v1beta1). v1.8.0 builds.
#
# Cold, on 2 cores (2026-12-01, sharing them with a kube-apiserver build): go mod tidy 38 s, virt-controller 591 s,
# virt-api 85 s, kubevirt-manifests 6 s; warm (binaries present) the script only prints the dir.
#
# Method: a throwaway module in bin/kubevirt/.work/$KUBEVIRT_VERSION requiring kubevirt.io/kubevirt, with
# KubeVirt's own replace block (its ./staging/src/kubevirt.io/{api,client-go} re-pointed to the published modules
# of the same version) and KubeVirt's own go.sum (some of its dependencies have no checksum-database entry, e.g.
# libvirt.org/go/libvirt). The work module is kept and shared by every component, so that a later component (the
# cgo virt-launcher) builds from the same dependency graph.
#
# libguestfs.org/libnbd cannot be fetched from the proxy (403, "Go module host not permitted"); only
# virt-launcher's NBD backup code uses it. A local replacement module at test/kubevirt/build/libnbd gets a
# `replace libguestfs.org/libnbd => <that dir>` line here when the dir exists.
set -euo pipefail

KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.8.0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${KUBEVIRT_BIN_DIR:-$ROOT/bin/kubevirt/$KUBEVIRT_VERSION}
WORK=${KUBEVIRT_WORK_DIR:-$ROOT/bin/kubevirt/.work/$KUBEVIRT_VERSION}
COMPONENTS=${COMPONENTS:-virt-controller virt-api kubevirt-manifests}
SRC=$ROOT/test/kubevirt/build
# The Debian packages of the node images' root filesystem (node section, below).
NODE_ROOTFS_PACKAGES=libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,nftables,iptables,procps,util-linux,tar
LIBNBD=$SRC/libnbd

log() { echo "kubevirt-build: $*" >&2; }

missing=()
for c in $COMPONENTS; do [[ -x $OUT/$c ]] || missing+=("$c"); done
# kubevirt-manifests is cheap and follows its source: rebuild it when main.go is newer than the binary.
if [[ " $COMPONENTS " == *" kubevirt-manifests "* && -x $OUT/kubevirt-manifests &&
  $SRC/manifests/main.go -nt $OUT/kubevirt-manifests ]]; then
  missing+=(kubevirt-manifests)
fi
# --- virt-launcher section (freshness): launcherctl follows its source; launcher-image this script and the binaries
# it links.
if [[ " $COMPONENTS " == *" launcherctl "* && -x $OUT/launcherctl &&
  -n $(find "$SRC/launcherctl" -name '*.go' -newer "$OUT/launcherctl") ]]; then
  missing+=(launcherctl)
fi
if [[ " $COMPONENTS " == *" launcher-image "* && -d $OUT/launcher-image ]]; then
  for f in "$ROOT/test/kubevirt/build.sh" "$OUT/virt-launcher" "$OUT/virt-launcher-monitor"; do
    if [[ ! -f $OUT/launcher-image/.complete || $f -nt $OUT/launcher-image/.complete ]]; then
      missing+=(launcher-image)
      break
    fi
  done
fi
# --- end of virt-launcher section (freshness)
# node-rootfs follows its package list.
if [[ " $COMPONENTS " == *" node-rootfs "* && -d $OUT/node-rootfs &&
  $(cat "$OUT/node-rootfs/.runpolicy-packages" 2>/dev/null) != "$NODE_ROOTFS_PACKAGES" ]]; then
  missing+=(node-rootfs)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$OUT" "$WORK"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
start=$(date +%s)

# work_module writes the throwaway module once (go.mod, go.sum, tools.go) and tidies it.
work_module() {
  [[ -f $WORK/.ready ]] && return 0
  log "preparing the work module for kubevirt.io/kubevirt $KUBEVIRT_VERSION in $WORK"
  rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
  local info dir modfile
  info=$(go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION")
  dir=$(sed -n 's/.*"Dir": "\(.*\)",*/\1/p' <<<"$info")
  modfile=$(sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' <<<"$info")
  {
    printf 'module runpolicy.local/kubevirtbuild\n\ngo 1.26.0\n\n'
    printf 'require (\n\tkubevirt.io/kubevirt %s\n\tkubevirt.io/api %s\n\tkubevirt.io/client-go %s\n)\n\n' \
      "$KUBEVIRT_VERSION" "$KUBEVIRT_VERSION" "$KUBEVIRT_VERSION"
    # KubeVirt's replace block, with its staging modules pointed at the published versions.
    sed -n '/^replace (/,/^)/p' "$modfile" |
      sed 's#^\(\s*kubevirt\.io/[a-z-]*\) => \./staging/.*#\1 => \1 '"$KUBEVIRT_VERSION"'#'
    [[ -f $LIBNBD/go.mod ]] && printf '\nreplace libguestfs.org/libnbd => %s\n' "$LIBNBD"
  } >go.mod
  cp "$dir/go.sum" go.sum && chmod u+w go.sum
  # The packages every component needs, so that one tidy serves them all.
  cat >tools.go <<'TOOLS'
//go:build tools

package tools

import (
	_ "kubevirt.io/kubevirt/cmd/virt-api"
	_ "kubevirt.io/kubevirt/cmd/virt-controller"
	_ "kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	_ "kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)
TOOLS
  # Launcher hook: the virt-launcher section adds its packages (cmd/virt-launcher, cmd/virt-launcher-monitor,
  # pkg/virt-handler/cmd-client, notify-server) here; they need the libnbd replacement above.
  local t=$(date +%s)
  go mod tidy >&2
  log "go mod tidy in $(( $(date +%s) - t ))s"
  touch .ready
}

ldflags() {
  local v=kubevirt.io/client-go/version
  echo "-s -w -X $v.gitVersion=$KUBEVIRT_VERSION -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
}

# build_component builds one component into $OUT. The virt-launcher section (cgo, libvirt-dev) adds its cases here.
build_component() {
  local c=$1 t
  t=$(date +%s)
  cd "$WORK"
  case $c in
  virt-controller | virt-api)
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/$c" >&2
    ;;
  kubevirt-manifests)
    mkdir -p manifests && cp "$SRC/manifests/main.go" manifests/
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" ./manifests >&2
    ;;
  virt-launcher | virt-launcher-monitor | launcherctl | launcher-image) # the virt-launcher section, below
    build_launcher_component "$c"
    ;;
  virt-handler | virt-chroot | virt-tail | virt-freezer | virt-probe | libvirt-hook-client | container-disk | node-rootfs | virtctl)
    # the node section, below
    build_node_component "$c"
    ;;
  *)
    log "unknown component $c"
    return 1
    ;;
  esac
  mv "$OUT/$c.tmp" "$OUT/$c"
  log "built $c in $(( $(date +%s) - t ))s"
}

# ------------------------------------------------------------------------------------------------------------------
# virt-launcher section: the real virt-launcher and virt-launcher-monitor, launcher-image/ (the files KubeVirt's
# launcher image adds to its base), and launcherctl (test/kubevirt/build/launcherctl: the test runner's bridge to
# KubeVirt's own virt-handler client packages and its container init). Not in the default COMPONENTS; the launcher
# runner (test/launcher) asks for them:
#
#   COMPONENTS="virt-launcher virt-launcher-monitor launcherctl launcher-image" test/kubevirt/build.sh
#
# virt-launcher is cgo (libvirt.org/go/libvirt): it needs Debian's libvirt-dev and pkg-config (installed with apt-get
# when missing and running as root). launcher-image/ is a tree the runner lays over the host's root in the compute
# container's mount namespace, as the launcher image lays its files over its base image:
#   usr/bin/virt-launcher, usr/bin/virt-launcher-monitor  hard links to the binaries built here
#   etc/libvirt/qemu.conf, etc/libvirt/virtqemud.conf, etc/libvirt/hooks/qemu, etc/nsswitch.conf  KubeVirt's files
#   etc/passwd, etc/group  the image's root and qemu (107) entries, plus the libvirt-qemu user and group Debian's
#                          libvirtd insists on ("Driver state initialization failed" without the group)
#   etc/libvirt/virtlogd.conf  empty: the defaults (the image has the distribution's file, all comments)
#   usr/sbin/virtqemud  Debian 12 has no virtqemud (its libvirt 9.0 is packaged monolithic): a wrapper that runs
#                       libvirtd with the same arguments, after linking virtqemud-sock to libvirtd's libvirt-sock
LAUNCHER_PACKAGES=(
  kubevirt.io/kubevirt/cmd/virt-launcher
  kubevirt.io/kubevirt/cmd/virt-launcher-monitor
  kubevirt.io/kubevirt/pkg/virt-handler/cmd-client
  kubevirt.io/kubevirt/pkg/virt-handler/notify-server
  kubevirt.io/kubevirt/pkg/virt-handler/notify-server/pipe
  kubevirt.io/kubevirt/pkg/virt-controller/services
  kubevirt.io/kubevirt/pkg/virt-api/webhooks/mutating-webhook/mutators
  kubevirt.io/kubevirt/pkg/testutils
)

# launcher_module adds the launcher's packages and the libnbd replacement to the shared work module, once.
launcher_module() {
  cd "$WORK"
  [[ -f .launcher-ready ]] && return 0
  log "adding virt-launcher's packages to the work module"
  go mod edit -replace "libguestfs.org/libnbd=$LIBNBD"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "${LAUNCHER_PACKAGES[@]}"
    printf ')\n'
  } >launcher_tools.go
  local t=$(date +%s)
  go mod tidy >&2
  log "go mod tidy (launcher) in $(( $(date +%s) - t ))s"
  touch .launcher-ready
}

launcher_cgo_deps() {
  pkg-config --exists libvirt 2>/dev/null && return 0
  if [[ $(id -u) != 0 ]]; then
    log "virt-launcher needs libvirt-dev and pkg-config (apt-get install -y libvirt-dev pkg-config)"
    return 1
  fi
  log "installing libvirt-dev pkg-config"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libvirt-dev pkg-config >&2
}

launcher_image() {
  local img=$OUT/launcher-image src
  src=$(cd "$WORK" && go list -m -f '{{.Dir}}' kubevirt.io/kubevirt)
  rm -rf "$img.tmp" && mkdir -p "$img.tmp"/{usr/bin,usr/sbin,etc/libvirt/hooks}
  ln "$OUT/virt-launcher" "$OUT/virt-launcher-monitor" "$img.tmp/usr/bin/"
  install -m 0644 "$src/cmd/virt-launcher/qemu.conf" "$src/cmd/virt-launcher/virtqemud.conf" "$img.tmp/etc/libvirt/"
  install -m 0755 "$src/cmd/virt-launcher/qemu" "$img.tmp/etc/libvirt/hooks/qemu"
  install -m 0644 "$src/cmd/virt-launcher/nsswitch.conf" "$img.tmp/etc/nsswitch.conf"
  : >"$img.tmp/etc/libvirt/virtlogd.conf"
  cat >"$img.tmp/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/bash
qemu:x:107:107:qemu:/home/qemu:/bin/bash
libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin
PASSWD
  cat >"$img.tmp/etc/group" <<'GROUP'
root:x:0:
qemu:x:107:
libvirt-qemu:x:64055:
GROUP
  cat >"$img.tmp/usr/sbin/virtqemud" <<'WRAPPER'
#!/bin/sh
# virtqemud for runpolicy's test launcher image (test/kubevirt/build.sh): Debian 12 ships only the monolithic
# libvirtd, which serves the same QEMU driver from the same config file. virt-launcher connects to virtqemud-sock;
# libvirtd listens on libvirt-sock in the same directory, so the first name is linked to the second.
if [ "$(id -u)" = 0 ]; then
	dir=/run/libvirt
else
	dir=${XDG_RUNTIME_DIR:?virt-launcher sets XDG_RUNTIME_DIR in non-root mode}/libvirt
fi
mkdir -p "$dir"
ln -sf libvirt-sock "$dir/virtqemud-sock"
exec /usr/sbin/libvirtd "$@"
WRAPPER
  chmod 0755 "$img.tmp/usr/sbin/virtqemud"
  touch "$img.tmp/.complete"
  rm -rf "$img"
}

# build_launcher_component writes $OUT/$c.tmp (build_component moves it into place). launcher-image links the
# binaries, so it comes after virt-launcher and virt-launcher-monitor in COMPONENTS.
build_launcher_component() {
  local c=$1
  launcher_module
  cd "$WORK"
  case $c in
  virt-launcher)
    launcher_cgo_deps
    CGO_ENABLED=1 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/$c" >&2
    ;;
  virt-launcher-monitor)
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/$c" >&2
    ;;
  launcherctl)
    rm -rf launcherctl && mkdir -p launcherctl && cp "$SRC"/launcherctl/*.go launcherctl/
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" ./launcherctl >&2
    ;;
  launcher-image)
    local b
    for b in virt-launcher virt-launcher-monitor; do
      [[ -x $OUT/$b ]] || { log "launcher-image needs $b: list it before launcher-image in COMPONENTS"; return 1; }
    done
    launcher_image
    ;;
  esac
}
# --- end of virt-launcher section ---------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------------------------
# Node section: what KubeVirt's images for a real node (test/cluster kubevirtnode.go) are made of.
#
#   COMPONENTS="virt-handler virt-chroot container-disk node-rootfs" test/kubevirt/build.sh
#
#   virt-handler, virt-chroot  KubeVirt's Go programs (virt-handler with cgo, for <linux/kvm.h>)
#   virt-tail, virt-freezer, virt-probe, libvirt-hook-client
#                              what KubeVirt's launcher image has in /usr/bin beside virt-launcher (the guest console
#                              log sidecar, guest filesystem freeze, probes, libvirt's hook)
#   virtctl                    KubeVirt's command-line client, for what a user does on the real node (virtctl console
#                              in make demo, virtctl reset in test/node)
#   container-disk             KubeVirt's C program (cmd/container-disk-v2alpha), static, which the launcher image
#                              carries and its pods copy into their init volume
#   node-rootfs/               a Debian 12 root filesystem (debootstrap, minbase) with libvirt's daemon, virsh, QEMU
#                              and the tools virt-handler runs (nft, findmnt, sysctl): the base of both images, where
#                              KubeVirt's use a CentOS Stream base with the same packages. Debian's mirror is the one
#                              this machine's apt uses. About 3 min and 460 MB.
node_mirror() {
  local m
  m=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}
build_node_component() {
  local c=$1 src
  cd "$WORK"
  case $c in
  virt-handler) # cgo: its node labeller reads KVM's constants from <linux/kvm.h>; linked against the image's glibc
    CGO_ENABLED=1 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/$c" >&2
    ;;
  virt-chroot | virt-tail | virt-freezer | virt-probe | virtctl)
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/$c" >&2
    ;;
  libvirt-hook-client)
    CGO_ENABLED=0 go build -trimpath -ldflags "$(ldflags)" -o "$OUT/$c.tmp" "kubevirt.io/kubevirt/cmd/virt-launcher/$c" >&2
    ;;
  container-disk)
    src=$(go list -m -f '{{.Dir}}' kubevirt.io/kubevirt)
    gcc -static -O2 -o "$OUT/$c.tmp" "$src/cmd/container-disk-v2alpha/main.c" >&2
    ;;
  node-rootfs)
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
    rm -rf "$OUT/$c.tmp"
    # debootstrap reads $COMPONENTS (archive components) from the environment, where it names ours.
    env -u COMPONENTS debootstrap --variant=minbase --include="$NODE_ROOTFS_PACKAGES" bookworm "$OUT/$c.tmp" "$(node_mirror)" >&2
    rm -rf "$OUT/$c.tmp"/var/cache/apt/archives/*.deb "$OUT/$c.tmp"/var/lib/apt/lists/*
    # libvirtd -d (virtqemud's wrapper, as root in node-labeller.sh) logs to /var/log/libvirt, which Debian's
    # packages leave to their postinst under systemd.
    mkdir -p "$OUT/$c.tmp/var/log/libvirt"
    echo "$NODE_ROOTFS_PACKAGES" >"$OUT/$c.tmp/.runpolicy-packages"
    rm -rf "$OUT/$c"
    ;;
  esac
}
# --- end of node section ------------------------------------------------------------------------------------------

work_module
for c in "${missing[@]}"; do build_component "$c"; done
log "done in $(( $(date +%s) - start ))s"
echo "$OUT"
