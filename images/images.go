// Package images builds runpolicy's two container images — the operator (runpolicy-controller) and the KubeVirt
// hook sidecar (runpolicy-hook-sidecar) — without a container engine and without a base image, with
// go-containerregistry: an image is a config plus layers, and a static Go binary needs nothing but itself and a
// passwd/group entry for the user it runs as.
//
// Each image has one layer: the static binary (CGO_ENABLED=0, -trimpath) in /usr/local/bin, /etc/passwd and
// /etc/group naming its user, that user's home and /tmp. Every tar header has the same mtime (the image's creation
// time, from SOURCE_DATE_EPOCH or the commit time), uid/gid 0 and sorted entries, so the same sources, version and
// Go toolchain give the same digest on every machine.
//
// An image is written as an OCI image layout in a tar archive (`<name>.tar`, what `docker save` writes since
// Docker 25): `kind load image-archive`, `ctr -n k8s.io images import` and `docker load` take it as it is, and
// `crane push` takes the layout directory it unpacks to. The index names the image by its full reference
// (io.containerd.image.name, e.g. ghcr.io/runpolicy/runpolicy-controller:0.1.0, which the chart pulls by default)
// and its tag (org.opencontainers.image.ref.name).
package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Spec describes one of runpolicy's images.
type Spec struct {
	// Name is the image's name under the repository prefix and the archive's file name (Name + ".tar").
	Name string
	// Package is the Go package of the binary, relative to the repository root.
	Package string
	// Binary is the binary's path in the image; it is the entrypoint.
	Binary string
	// User and Group name the image's user (numeric in the config, so that runAsNonRoot can verify it).
	User  string
	Group string
	UID   int
	GID   int
	// Home is the user's home directory in /etc/passwd, created in the layer and owned by the user.
	Home string
	// Title and Description fill org.opencontainers.image.title and .description.
	Title       string
	Description string
}

// Controller is the operator's image, the chart's image.repository.
var Controller = Spec{
	Name:    "runpolicy-controller",
	Package: "./cmd/controller",
	Binary:  "/usr/local/bin/runpolicy-controller",
	// distroless's nonroot user; the chart's pod runs with runAsNonRoot.
	User: "nonroot", Group: "nonroot", UID: 65532, GID: 65532, Home: "/home/nonroot",
	Title:       "runpolicy-controller",
	Description: "runpolicy operator: run policies and power operations for KubeVirt virtual machines",
}

// HookSidecar is the hook sidecar's image, the chart's hookSidecar.image.repository. KubeVirt's non-root launcher
// runs QEMU as uid/gid 107 (qemu); QEMU creates the QMP socket in this container's subdirectory of the shared hooks
// emptyDir (/var/run/kubevirt-hooks/$CONTAINER_NAME in the compute container, the sidecar's
// /var/run/kubevirt-hooks), so the sidecar runs as the same user to connect to it.
var HookSidecar = Spec{
	Name:    "runpolicy-hook-sidecar",
	Package: "./cmd/hook-sidecar",
	Binary:  "/usr/local/bin/hook-sidecar",
	User:    "qemu", Group: "qemu", UID: 107, GID: 107, Home: "/home/qemu",
	Title:       "runpolicy-hook-sidecar",
	Description: "runpolicy's KubeVirt hook sidecar: ends the VMI on a guest reboot and records why QEMU stopped",
}

// All lists the images `make images` builds.
func All() []Spec { return []Spec{Controller, HookSidecar} }

// Lookup returns the spec of the image called name.
func Lookup(name string) (Spec, bool) {
	for _, s := range All() {
		if s.Name == name {
			return s, true
		}
	}
	return Spec{}, false
}

// Platform is the only platform the images are built for.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Ref is the image's full reference for the given metadata, e.g. ghcr.io/runpolicy/runpolicy-controller:0.1.0.
func (s Spec) Ref(m Metadata) string { return m.Repository + "/" + s.Name + ":" + m.Version }

// ArchiveName is the archive's file name.
func (s Spec) ArchiveName() string { return s.Name + ".tar" }

// Result is what Build wrote.
type Result struct {
	Spec    Spec
	Ref     string
	Archive string
	Digest  v1.Hash // the image manifest's digest
}

// Build builds the spec's binary from the repository at root and writes its image archive into outDir.
func Build(ctx context.Context, root, outDir string, spec Spec, meta Metadata) (Result, error) {
	if err := meta.validate(); err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Result{}, err
	}
	work, err := os.MkdirTemp(outDir, "."+spec.Name+"-")
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = os.RemoveAll(work) }()
	bin := filepath.Join(work, filepath.Base(spec.Binary))
	if err := BuildBinary(ctx, root, spec, meta, bin); err != nil {
		return Result{}, err
	}
	img, err := NewImage(spec, meta, bin)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	archive := filepath.Join(outDir, spec.ArchiveName())
	if err := WriteArchive(archive, img, spec.Ref(meta), meta.Created); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{}, err
	}
	return Result{Spec: spec, Ref: spec.Ref(meta), Archive: archive, Digest: digest}, nil
}

// VersionVar is the variable the builder stamps with the version (-ldflags -X).
const VersionVar = "github.com/runpolicy/runpolicy/internal/version.Version"

// LDFlags are the linker flags of the images' binaries: no symbol table or DWARF, the version stamped in.
func LDFlags(version string) string { return "-s -w -X " + VersionVar + "=" + version }

// BuildBinary builds the spec's static linux/amd64 binary into out. -trimpath and -buildvcs=false keep paths
// and the working tree's state out of it (the revision is in the image's annotations), so that it depends only
// on the sources, the version and the Go toolchain.
func BuildBinary(ctx context.Context, root string, spec Spec, meta Metadata, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags="+LDFlags(meta.Version), "-o", out, spec.Package)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+Platform.OS, "GOARCH="+Platform.Architecture,
		"GOAMD64=v1", "GOFLAGS=-mod=readonly")
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", spec.Package, err, strings.TrimSpace(string(output)))
	}
	return nil
}
