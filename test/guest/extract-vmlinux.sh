#!/bin/sh
# extract-vmlinux.sh BZIMAGE OUT — write the ELF vmlinux embedded in a compressed x86 bzImage to OUT.
# Same idea as the kernel's scripts/extract-vmlinux: find each known compression magic, try to decompress from
# there, keep the first result that is an ELF file.
set -eu
img=$1
out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

try() { # try MAGIC-AS-PRINTF SEARCH-TAIL DECOMPRESSOR...
	magic=$1
	shift
	for pos in $(LC_ALL=C grep -aboF "$(printf "$magic")" "$img" 2>/dev/null | cut -d: -f1); do
		tail -c +$((pos + 1)) "$img" | "$@" >"$tmp/vmlinux" 2>/dev/null || true
		if [ -s "$tmp/vmlinux" ] && readelf -h "$tmp/vmlinux" >/dev/null 2>&1; then
			mv "$tmp/vmlinux" "$out"
			exit 0
		fi
	done
}

try '\002\041\114\030' lz4 -dc
try '\037\213\010' gzip -dc
try '\375\067\172\130\132\000' xz -dc
try '\050\265\057\375' zstd -dc
try '\102\132\150' bzip2 -dc
echo "extract-vmlinux.sh: no ELF kernel found in $img" >&2
exit 1
