#!/usr/bin/env bash
# Regenerates deepcopy code, CRDs and RBAC and fails when the result differs from the files in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
paths=(api crds test/crds charts)
for p in "${paths[@]}"; do [[ -e $p ]] && mkdir -p "$snap/$(dirname "$p")" && cp -a "$p" "$snap/$p"; done
make --no-print-directory generate manifests >/dev/null
stale=0
for p in "${paths[@]}"; do
  if ! diff -r "$snap/$p" "$p" >/dev/null 2>&1; then
    echo "verify: $p is stale; run 'make generate manifests' and commit:" >&2
    diff -r "$snap/$p" "$p" | head -40 >&2 || true
    stale=1
  fi
done
[[ $stale == 0 ]] && echo "verify: generated files are up to date"
exit $stale
