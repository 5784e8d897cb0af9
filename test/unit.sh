#!/usr/bin/env bash
# make test-unit: the tests that need no cluster (no kube-apiserver, no KubeVirt, no QEMU or libvirt), with -race.
#
# A test file that needs the test cluster, KubeVirt, the real virt-launcher, QEMU or libvirt carries the build
# constraint //go:build !unit; -tags unit leaves it out, and plain `go test ./...` (make test) keeps it. So do the
# image tests (images/), which compile the release binaries and hash their archives: about 4 minutes under -race
# on 2 cores, 1 without, where everything else takes seconds. Under the tag test/cluster's Start and
# test/launcher's Require refuse, so a file that lacks the constraint fails here with a message saying so instead
# of starting a cluster. Every package must run at least one test (unless -run).
# Arguments go to go test (e.g. -run TestDecide, -count=1).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=$(go list -tags unit -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...)
if [ -z "$pkgs" ]; then
  echo "test-unit: no package has a test file without //go:build !unit" >&2
  exit 1
fi
echo "test-unit: $(wc -l <<<"$pkgs") packages, -race -tags unit"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086 # one package per word
go test -race -tags unit "$@" $pkgs 2>&1 | tee "$out"
# With -run a package may rightly match nothing.
if [[ " $* " != *" -run"* ]] && grep -q '\[no tests to run\]' "$out"; then
  echo "test-unit: a package above ran no test" >&2
  exit 1
fi
