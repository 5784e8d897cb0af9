#!/bin/sh
# generate.sh — regenerate the Go code for KubeVirt's hook sidecar protocol (hookapi/*/*.proto, mirrors of
# kubevirt/kubevirt pkg/hooks/{info,v1alpha2,v1alpha3}). Needs protoc (Debian: protobuf-compiler); the Go plugins
# are pinned as tools in test/tools/go.mod. The generated files are committed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
module=github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go -C "$root/test/tools" build -o "$bin/" \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc

cd "$here/hookapi"
for proto in info/api_info.proto v1alpha2/api_v1alpha2.proto v1alpha3/api_v1alpha3.proto; do
	dir=$(dirname "$proto")
	# M options map each file to its Go package, so the .proto files need no go_package option and keep KubeVirt's
	# package, service, message names and field numbers unchanged.
	protoc -I . \
		--plugin=protoc-gen-go="$bin/protoc-gen-go" \
		--plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
		--go_out=. --go_opt=paths=source_relative --go_opt="M$proto=$module/$dir" \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative --go-grpc_opt="M$proto=$module/$dir" \
		"$proto"
done
