package images

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// WriteArchive writes img as a one-image OCI image layout tar archive at archivePath, its index naming the image
// ref (io.containerd.image.name) and its tag (org.opencontainers.image.ref.name). The archive's entries are
// sorted, root-owned and dated mtime, so its bytes depend only on the image.
func WriteArchive(archivePath string, img v1.Image, ref string, mtime time.Time) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(archivePath), ".layout-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		AnnotationImageName: tag.Name(),
		AnnotationRefName:   tag.TagStr(),
	})); err != nil {
		return err
	}
	tmp := archivePath + ".tmp"
	if err := tarDir(tmp, dir, mtime); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, archivePath)
}

// tarDir writes the tree under dir into the tar file out, in lexical order (filepath.WalkDir's), with fixed
// owners, modes and mtime.
func tarDir(out, dir string, mtime time.Time) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime.UTC().Truncate(time.Second), Format: tar.FormatPAX}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			return tw.WriteHeader(hdr)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, info.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer func() { _ = src.Close() }()
			_, err = io.Copy(tw, src)
			return err
		default:
			return fmt.Errorf("%s: not a regular file or directory", p)
		}
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// Archive is an image read back from an archive WriteArchive wrote.
type Archive struct {
	Image v1.Image
	// Descriptor is the image's entry in the archive's index: its digest and the names it carries.
	Descriptor v1.Descriptor
	// Dir is the OCI image layout the archive was unpacked to (what `crane push` takes).
	Dir string
}

// Ref is the image's full reference, as `ctr images import` and `docker load` name it.
func (a Archive) Ref() string { return a.Descriptor.Annotations[AnnotationImageName] }

// Open unpacks the archive into dir (which must be empty or missing) and reads its one image with
// go-containerregistry's OCI layout reader.
func Open(archivePath, dir string) (Archive, error) {
	if err := untar(archivePath, dir); err != nil {
		return Archive{}, fmt.Errorf("unpacking %s: %w", archivePath, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return Archive{}, fmt.Errorf("%s: %w", archivePath, err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		return Archive{}, fmt.Errorf("%s: %w", archivePath, err)
	}
	if len(manifest.Manifests) != 1 {
		return Archive{}, fmt.Errorf("%s: %d images in the index, want 1", archivePath, len(manifest.Manifests))
	}
	desc := manifest.Manifests[0]
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return Archive{}, fmt.Errorf("%s: %w", archivePath, err)
	}
	return Archive{Image: img, Descriptor: desc, Dir: dir}, nil
}

func untar(archivePath, dir string) error {
	f, err := os.Open(archivePath)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		rel := path.Clean(hdr.Name)
		if !fs.ValidPath(rel) {
			return fmt.Errorf("unsafe path %q", hdr.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeFile(target, tr, 0o644); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected tar entry type %q", hdr.Name, hdr.Typeflag)
		}
	}
}

func writeFile(target string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// ExtractFile copies the regular file at file (an absolute path in the image, e.g. the spec's Binary) out of the
// image's flattened file system to dst, with the file's permission bits.
func ExtractFile(img v1.Image, file, dst string) error {
	want := strings.TrimPrefix(path.Clean(file), "/")
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s is not in the image", file)
		}
		if err != nil {
			return err
		}
		if strings.TrimPrefix(path.Clean(hdr.Name), "/") != want {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("%s in the image is not a regular file", file)
		}
		return writeFile(dst, tr, hdr.FileInfo().Mode().Perm())
	}
}

// ExtractRootFS unpacks the image's flattened file system under dst (which must be empty or missing): its
// directories and regular files with their modes and, when running as root, their owners. It returns the image's
// config (entrypoint, user, environment), for a caller that runs the image's root file system itself.
func ExtractRootFS(img v1.Image, dst string) (*v1.ConfigFile, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	chown := os.Geteuid() == 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return cfg, nil
		}
		if err != nil {
			return nil, err
		}
		rel := strings.TrimPrefix(path.Clean(hdr.Name), "/")
		if !fs.ValidPath(rel) {
			return nil, fmt.Errorf("unsafe path %q in the image", hdr.Name)
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		mode := hdr.FileInfo().Mode()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			if err := writeFile(target, tr, mode.Perm()); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%s: unexpected tar entry type %q in the image", hdr.Name, hdr.Typeflag)
		}
		if err := os.Chmod(target, mode&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid)); err != nil {
			return nil, err
		}
		if chown {
			if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
				return nil, err
			}
		}
	}
}
