package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NewImage assembles the spec's image around the binary at binPath: one layer, an OCI manifest and config,
// the metadata as annotations and labels. Nothing in it comes from the clock or the file system's metadata.
func NewImage(spec Spec, meta Metadata, binPath string) (v1.Image, error) {
	if err := meta.validate(); err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(binPath)
	if err != nil {
		return nil, err
	}
	layerTar, err := rootFS(spec, binary, meta.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.DefaultCompression),
		tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}

	annotations := Annotations(spec, meta)
	created := v1.Time{Time: meta.Created}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: Platform.Architecture,
		OS:           Platform.OS,
		Created:      created,
		Config: v1.Config{
			User:       strconv.Itoa(spec.UID) + ":" + strconv.Itoa(spec.GID),
			Entrypoint: []string{spec.Binary},
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			WorkingDir: "/",
			Labels:     annotations,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "runpolicy images/build " + spec.Name,
			Comment:   spec.Binary + ", /etc/passwd and /etc/group (" + spec.User + "), " + spec.Home + ", /tmp",
		},
	})
	if err != nil {
		return nil, err
	}
	withAnnotations, ok := mutate.Annotations(img, annotations).(v1.Image)
	if !ok {
		return nil, fmt.Errorf("annotated %s is not an image", spec.Name)
	}
	return withAnnotations, nil
}

// Annotations are the OCI annotations of the spec's image (the manifest's annotations and the config's labels).
func Annotations(spec Spec, meta Metadata) map[string]string {
	a := map[string]string{
		AnnotationCreated:     meta.Created.UTC().Format(time.RFC3339),
		AnnotationSource:      meta.Source,
		AnnotationVersion:     meta.Version,
		AnnotationTitle:       spec.Title,
		AnnotationDescription: spec.Description,
	}
	if meta.Revision != "" {
		a[AnnotationRevision] = meta.Revision
	}
	return a
}

// rootFS is the layer's uncompressed tar: entries sorted by name, every header with the same mtime, owned by root
// except the user's home.
func rootFS(spec Spec, binary []byte, mtime time.Time) ([]byte, error) {
	type entry struct {
		mode     int64 // permission bits; a directory when data is nil and dir is set
		dir      bool
		uid, gid int
		data     []byte
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:%s:/sbin/nologin\n",
		spec.User, spec.UID, spec.GID, spec.User, spec.Home)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", spec.Group, spec.GID)
	entries := map[string]entry{
		"etc/passwd":                         {mode: 0o644, data: []byte(passwd)},
		"etc/group":                          {mode: 0o644, data: []byte(group)},
		"tmp":                                {mode: 0o1777, dir: true},
		strings.Trim(spec.Home, "/"):         {mode: 0o700, dir: true, uid: spec.UID, gid: spec.GID},
		strings.TrimPrefix(spec.Binary, "/"): {mode: 0o755, data: binary},
	}
	// Every parent directory, root-owned 0755.
	for name := range entries {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if _, ok := entries[dir]; !ok {
				entries[dir] = entry{mode: 0o755, dir: true}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		e := entries[name]
		hdr := &tar.Header{
			Name:    name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			ModTime: mtime.UTC().Truncate(time.Second),
			Format:  tar.FormatPAX,
		}
		if e.dir {
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
