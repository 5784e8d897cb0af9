package images

import (
	"context"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BinaryFromImage builds the spec's image from the runpolicy module containing the current directory (its default
// metadata, as `make images` does) into dir, and returns the path of its binary extracted from the image's layer,
// dir/<base name of spec.Binary>, with the result of the build. Tests that run a binary where the cluster runs the
// image (the hook sidecar beside the real virt-launcher) run this one, so that they test what the image ships.
func BinaryFromImage(ctx context.Context, spec Spec, dir string) (string, Result, error) {
	archive, err := buildAndOpen(ctx, spec, dir)
	if err != nil {
		return "", Result{}, err
	}
	bin := filepath.Join(dir, filepath.Base(spec.Binary))
	if err := ExtractFile(archive.Image, spec.Binary, bin); err != nil {
		return "", Result{}, err
	}
	return bin, archive.result, nil
}

type builtArchive struct {
	Archive
	result Result
}

func buildAndOpen(ctx context.Context, spec Spec, dir string) (builtArchive, error) {
	root, err := RepoRoot()
	if err != nil {
		return builtArchive{}, err
	}
	meta, err := MetadataFromRepo(root)
	if err != nil {
		return builtArchive{}, err
	}
	res, err := Build(ctx, root, dir, spec, meta)
	if err != nil {
		return builtArchive{}, err
	}
	archive, err := Open(res.Archive, filepath.Join(dir, spec.Name+".layout"))
	if err != nil {
		return builtArchive{}, err
	}
	return builtArchive{Archive: archive, result: res}, nil
}

// RootFSFromImage builds the spec's image as BinaryFromImage does into dir and unpacks its whole root file system
// to dir/rootfs (ExtractRootFS): the binary, /etc/passwd and /etc/group, the user's home. It returns that
// directory and the image's config (Config.Entrypoint, Config.User such as "107:107").
func RootFSFromImage(ctx context.Context, spec Spec, dir string) (string, *v1.ConfigFile, error) {
	archive, err := buildAndOpen(ctx, spec, dir)
	if err != nil {
		return "", nil, err
	}
	rootfs := filepath.Join(dir, "rootfs")
	cfg, err := ExtractRootFS(archive.Image, rootfs)
	if err != nil {
		return "", nil, err
	}
	return rootfs, cfg, nil
}

// HookSidecarBinary is BinaryFromImage for the hook sidecar: the path of the hook-sidecar binary from the
// runpolicy-hook-sidecar image, built into dir.
func HookSidecarBinary(ctx context.Context, dir string) (string, error) {
	bin, _, err := BinaryFromImage(ctx, HookSidecar, dir)
	return bin, err
}
