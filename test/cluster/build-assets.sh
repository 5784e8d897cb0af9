#!/usr/bin/env bash
# Builds the control-plane binaries the integration tests run (kube-apiserver, etcd and, optionally,
# kube-controller-manager and kubectl) from Go modules, because no binary download works offline.
# The result goes into a versioned folder under bin/ and is skipped when that folder is complete.
#
#   test/cluster/build-assets.sh            # prints the assets dir on stdout
#   EXTRA="kube-controller-manager kubectl" test/cluster/build-assets.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${ASSETS_DIR:-$ROOT/bin/k8s/${K8S_VERSION}-etcd-${ETCD_VERSION}}
EXTRA=${EXTRA:-}
WORK=${WORK_DIR:-$ROOT/bin/k8s/.work}

log() { echo "build-assets: $*" >&2; }

want=(etcd kube-apiserver $EXTRA)
missing=()
for b in "${want[@]}"; do [[ -x $OUT/$b ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$OUT" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
start=$(date +%s)

if [[ " ${missing[*]} " == *" etcd "* ]]; then
  log "building etcd $ETCD_VERSION"
  d=$WORK/etcd && rm -rf "$d" && mkdir -p "$d"
  (cd "$d" && printf 'module runpolicy.local/etcdtools\n\ngo 1.26.0\n' > go.mod \
    && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3 >&2 \
    && mv "$OUT/etcd.tmp" "$OUT/etcd")
fi

k8s=()
for b in "${missing[@]}"; do [[ $b == etcd ]] || k8s+=("$b"); done
if [[ ${#k8s[@]} -gt 0 ]]; then
  log "building ${k8s[*]} $K8S_VERSION"
  d=$WORK/k8s && rm -rf "$d" && mkdir -p "$d"
  cd "$d"
  printf 'module runpolicy.local/k8stools\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n' "$K8S_VERSION" > go.mod
  # k8s.io/kubernetes replaces its staging modules with ./staging paths; point each at the published version.
  modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  {
    echo "replace ("
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$modfile"
    echo ")"
  } >> go.mod
  {
    echo "//go:build tools"
    echo "package tools"
    echo "import ("
    for b in "${k8s[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
    echo ")"
  } > tools.go
  go mod tidy >&2
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldf="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
  ldf+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  for b in "${k8s[@]}"; do
    log "go build $b"
    go build -trimpath -ldflags "$ldf" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
    mv "$OUT/$b.tmp" "$OUT/$b"
  done
fi
log "done in $(( $(date +%s) - start ))s"
echo "$OUT"
