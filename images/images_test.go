//go:build !unit

package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"

	"github.com/runpolicy/runpolicy/images"
)

// The images are built once per test binary, into a directory of its own, as `make images` builds them.
var (
	buildOnce sync.Once
	buildDir  string
	repoRoot  string
	meta      images.Metadata
	results   map[string]images.Result
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func build(t *testing.T) map[string]images.Result {
	t.Helper()
	buildOnce.Do(func() {
		results, buildErr = buildAll(func() (string, error) {
			var err error
			buildDir, err = os.MkdirTemp("", "runpolicy-images-")
			return buildDir, err
		})
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return results
}

func buildAll(mkdir func() (string, error)) (map[string]images.Result, error) {
	var err error
	if repoRoot == "" {
		if repoRoot, err = images.RepoRoot(); err != nil {
			return nil, err
		}
		if meta, err = images.MetadataFromRepo(repoRoot); err != nil {
			return nil, err
		}
	}
	dir, err := mkdir()
	if err != nil {
		return nil, err
	}
	out := map[string]images.Result{}
	for _, spec := range images.All() {
		res, err := images.Build(context.Background(), repoRoot, dir, spec, meta)
		if err != nil {
			return nil, err
		}
		out[spec.Name] = res
	}
	return out, nil
}

func open(t *testing.T, spec images.Spec) images.Archive {
	t.Helper()
	a, err := images.Open(build(t)[spec.Name].Archive, filepath.Join(t.TempDir(), "layout"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestImageConfigAndAnnotations(t *testing.T) {
	for _, spec := range images.All() {
		t.Run(spec.Name, func(t *testing.T) {
			a := open(t, spec)
			res := build(t)[spec.Name]
			if a.Descriptor.Digest != res.Digest {
				t.Errorf("index names digest %s, the build reported %s", a.Descriptor.Digest, res.Digest)
			}
			wantRef := images.DefaultRepository + "/" + spec.Name + ":" + meta.Version
			if a.Ref() != wantRef || a.Descriptor.Annotations[images.AnnotationRefName] != meta.Version {
				t.Errorf("index annotations %v, want %s=%s and %s=%s", a.Descriptor.Annotations,
					images.AnnotationImageName, wantRef, images.AnnotationRefName, meta.Version)
			}

			manifest, err := a.Image.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if manifest.MediaType != types.OCIManifestSchema1 || manifest.Config.MediaType != types.OCIConfigJSON {
				t.Errorf("media types %s, config %s; want OCI", manifest.MediaType, manifest.Config.MediaType)
			}
			if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != types.OCILayer {
				t.Errorf("layers %+v, want one %s", manifest.Layers, types.OCILayer)
			}
			wantAnnotations := map[string]string{
				images.AnnotationSource:   images.DefaultSource,
				images.AnnotationRevision: meta.Revision,
				images.AnnotationVersion:  meta.Version,
				images.AnnotationCreated:  meta.Created.Format(time.RFC3339),
				images.AnnotationTitle:    spec.Name,
			}
			if meta.Revision == "" {
				t.Error("no git revision: the tests run in a git checkout")
			}
			for k, v := range wantAnnotations {
				if got := manifest.Annotations[k]; got != v {
					t.Errorf("manifest annotation %s = %q, want %q", k, got, v)
				}
			}

			cfg, err := a.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			wantUser := fmt.Sprintf("%d:%d", spec.UID, spec.GID)
			if cfg.Config.User != wantUser {
				t.Errorf("config User %q, want %q", cfg.Config.User, wantUser)
			}
			if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != spec.Binary || len(cfg.Config.Cmd) != 0 {
				t.Errorf("config Entrypoint %q Cmd %q, want [%s] and none", cfg.Config.Entrypoint, cfg.Config.Cmd, spec.Binary)
			}
			if cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
			}
			if !cfg.Created.Equal(meta.Created) {
				t.Errorf("config created %s, want %s", cfg.Created.Time, meta.Created)
			}
			for k, v := range manifest.Annotations {
				if cfg.Config.Labels[k] != v {
					t.Errorf("config label %s = %q, want the annotation's %q", k, cfg.Config.Labels[k], v)
				}
			}
		})
	}
}

func TestImageLayer(t *testing.T) {
	for _, spec := range images.All() {
		t.Run(spec.Name, func(t *testing.T) {
			layers, err := open(t, spec).Image.Layers()
			if err != nil {
				t.Fatal(err)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = rc.Close() }()
			home := strings.TrimPrefix(spec.Home, "/") + "/"
			bin := strings.TrimPrefix(spec.Binary, "/")
			var names []string
			files := map[string]string{}
			tr := tar.NewReader(rc)
			for {
				hdr, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, hdr.Name)
				if !hdr.ModTime.Equal(meta.Created) {
					t.Errorf("%s: mtime %s, want the image's creation time %s", hdr.Name, hdr.ModTime, meta.Created)
				}
				wantUID, wantGID, wantMode := 0, 0, int64(0o755)
				switch hdr.Name {
				case home:
					wantUID, wantGID, wantMode = spec.UID, spec.GID, 0o700
				case "tmp/":
					wantMode = 0o1777
				case "etc/passwd", "etc/group":
					wantMode = 0o644
				}
				if hdr.Uid != wantUID || hdr.Gid != wantGID || hdr.Mode != wantMode {
					t.Errorf("%s: uid/gid %d/%d mode %o, want %d/%d mode %o", hdr.Name, hdr.Uid, hdr.Gid, hdr.Mode,
						wantUID, wantGID, wantMode)
				}
				if hdr.Typeflag == tar.TypeReg && hdr.Name != bin {
					data, err := io.ReadAll(tr)
					if err != nil {
						t.Fatal(err)
					}
					files[hdr.Name] = string(data)
				}
			}
			want := []string{"etc/", "etc/group", "etc/passwd", "home/", home, "tmp/", "usr/", "usr/local/",
				"usr/local/bin/", bin}
			sort.Strings(want)
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Errorf("layer entries %q, want %q (sorted)", names, want)
			}
			passwd := fmt.Sprintf("\n%s:x:%d:%d:%s:%s:/sbin/nologin\n", spec.User, spec.UID, spec.GID, spec.User, spec.Home)
			if !strings.Contains("\n"+files["etc/passwd"], passwd) {
				t.Errorf("/etc/passwd %q lacks %q", files["etc/passwd"], passwd)
			}
			group := fmt.Sprintf("\n%s:x:%d:\n", spec.Group, spec.GID)
			if !strings.Contains("\n"+files["etc/group"], group) {
				t.Errorf("/etc/group %q lacks %q", files["etc/group"], group)
			}
		})
	}
}

// The binary in the layer is a static linux/amd64 binary built as the builder says, and it runs.
func TestImageBinaryRuns(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("the images' binaries are linux/amd64; this machine is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	wantFlag := map[string]string{images.Controller.Name: "-hook-sidecar-image", images.HookSidecar.Name: "-hooks-dir"}
	for _, spec := range images.All() {
		t.Run(spec.Name, func(t *testing.T) {
			bin := extracted(t, spec)
			info, err := buildinfo.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string]string{}
			for _, s := range info.Settings {
				settings[s.Key] = s.Value
			}
			// (-trimpath keeps -ldflags out of the build info; the controller's log shows the version, below.)
			if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" || settings["GOOS"] != "linux" ||
				settings["GOARCH"] != "amd64" {
				t.Errorf("build settings %v, want CGO_ENABLED=0 -trimpath=true linux/amd64", settings)
			}
			if info.Path != "github.com/runpolicy/runpolicy/"+strings.TrimPrefix(spec.Package, "./") {
				t.Errorf("binary's package %s, want %s", info.Path, spec.Package)
			}

			out, err := exec.Command(bin, "--help").CombinedOutput()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatalf("running %s --help: %v", spec.Binary, err)
			}
			if !strings.Contains(string(out), "Usage of") || !strings.Contains(string(out), wantFlag[spec.Name]) {
				t.Errorf("%s --help printed no usage naming %s:\n%s", spec.Binary, wantFlag[spec.Name], out)
			}

			if spec.Name == images.Controller.Name {
				// Without a cluster it stops at the kubeconfig, after its first log line.
				cmd := exec.Command(bin, "--kubeconfig", filepath.Join(t.TempDir(), "none"))
				cmd.Env = []string{"HOME=" + t.TempDir()}
				out, _ := cmd.CombinedOutput()
				if want := `"msg":"Starting runpolicy","version":"` + meta.Version + `"`; !strings.Contains(string(out), want) {
					t.Errorf("%s logged no %s:\n%s", spec.Binary, want, out)
				}
			}
		})
	}
}

// The chart pulls exactly the images `make images` names: its tags default to appVersion, the images' version.
func TestChartDefaultsMatchImages(t *testing.T) {
	res := build(t)
	var values struct {
		Image struct {
			Repository string `json:"repository"`
			Tag        string `json:"tag"`
		} `json:"image"`
		HookSidecar struct {
			Image struct {
				Repository string `json:"repository"`
				Tag        string `json:"tag"`
			} `json:"image"`
		} `json:"hookSidecar"`
	}
	data, err := os.ReadFile(filepath.Join(repoRoot, images.ChartPath, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	appVersion, err := images.ChartAppVersion(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		spec      images.Spec
		repo, tag string
	}{
		{images.Controller, values.Image.Repository, values.Image.Tag},
		{images.HookSidecar, values.HookSidecar.Image.Repository, values.HookSidecar.Image.Tag},
	} {
		if c.tag != "" {
			t.Errorf("values.yaml tag of %s is %q; the chart's default is empty (= appVersion)", c.repo, c.tag)
		}
		a := open(t, c.spec)
		if want := c.repo + ":" + appVersion; a.Ref() != want || res[c.spec.Name].Ref != want {
			t.Errorf("image %s is named %s (build: %s); the chart pulls %s", c.spec.Name, a.Ref(), res[c.spec.Name].Ref, want)
		}
		manifest, err := a.Image.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if v := manifest.Annotations[images.AnnotationVersion]; v != appVersion {
			t.Errorf("image %s has version %q, the chart's appVersion is %q", c.spec.Name, v, appVersion)
		}
	}
}

// A second build of the same sources gives the same digests and the same archive bytes.
func TestBuildIsReproducible(t *testing.T) {
	first := build(t)
	second, err := buildAll(func() (string, error) { return t.TempDir(), nil })
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range first {
		b := second[name]
		if a.Digest != b.Digest {
			t.Errorf("%s: digest %s, then %s", name, a.Digest, b.Digest)
		}
		if sa, sb := fileSum(t, a.Archive), fileSum(t, b.Archive); sa != sb {
			t.Errorf("%s: archive sha256 %s, then %s", name, sa, sb)
		}
	}
}

// The image depends on its inputs only: the same binary and metadata give the same digest, a different creation
// time or version a different one.
func TestNewImageDependsOnInputsOnly(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := images.Metadata{Repository: "registry.example/x", Version: "1.2.3", Revision: "abc", Source: "https://example.org",
		Created: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)}
	digest := func(m images.Metadata) v1.Hash {
		img, err := images.NewImage(images.HookSidecar, m, bin)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	base := digest(m)
	if again := digest(m); again != base {
		t.Errorf("same inputs: digest %s, then %s", base, again)
	}
	later, other := m, m
	later.Created = later.Created.Add(time.Second)
	other.Version = "1.2.4"
	if digest(later) == base || digest(other) == base {
		t.Error("a different creation time or version gave the same digest")
	}

	// The archive's bytes too, and the archive reads back as the same image.
	img, err := images.NewImage(images.HookSidecar, m, bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sums := make([]string, 0, 2)
	for _, name := range []string{"a.tar", "b.tar"} {
		if err := images.WriteArchive(filepath.Join(dir, name), img, "registry.example/x/y:1.2.3", m.Created); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, fileSum(t, filepath.Join(dir, name)))
	}
	if sums[0] != sums[1] {
		t.Errorf("the same image written twice: archive sha256 %s, then %s", sums[0], sums[1])
	}
	a, err := images.Open(filepath.Join(dir, "a.tar"), filepath.Join(dir, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := a.Image.Digest(); got != base || a.Ref() != "registry.example/x/y:1.2.3" {
		t.Errorf("read back %s named %q, wrote %s", got, a.Ref(), base)
	}
	extracted := filepath.Join(dir, "extracted")
	if err := images.ExtractFile(a.Image, images.HookSidecar.Binary, extracted); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(extracted); !bytes.Equal(data, []byte("#!/bin/true\n")) {
		t.Errorf("extracted %q", data)
	}
}

// The helper other tests use to run the hook sidecar the image ships (test/launcher, beside the real
// virt-launcher).
func TestHookSidecarBinary(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("the images' binaries are linux/amd64; this machine is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	build(t) // the same build; its cache makes this one cheap
	bin, err := images.HookSidecarBinary(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(bin) != "hook-sidecar" {
		t.Errorf("binary %s, want .../hook-sidecar", bin)
	}
	if fileSum(t, bin) != fileSum(t, extracted(t, images.HookSidecar)) {
		t.Error("HookSidecarBinary differs from the binary in the image `make images` builds")
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "-hooks-dir") {
		t.Errorf("%s --help:\n%s", bin, out)
	}
}

// The whole root file system, for a caller that runs the image's tree (user, passwd, entrypoint) itself.
func TestRootFSFromImage(t *testing.T) {
	build(t)
	rootfs, cfg, err := images.RootFSFromImage(context.Background(), images.HookSidecar, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "107:107" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != images.HookSidecar.Binary {
		t.Errorf("config user %q entrypoint %q", cfg.Config.User, cfg.Config.Entrypoint)
	}
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
	if err != nil || !strings.Contains(string(passwd), "qemu:x:107:107:") {
		t.Errorf("rootfs /etc/passwd %q, %v", passwd, err)
	}
	bin := filepath.Join(rootfs, filepath.FromSlash(images.HookSidecar.Binary))
	if fileSum(t, bin) != fileSum(t, extracted(t, images.HookSidecar)) {
		t.Error("the rootfs's binary differs from the image's")
	}
	tmp, err := os.Stat(filepath.Join(rootfs, "tmp"))
	if err != nil || tmp.Mode()&os.ModeSticky == 0 || tmp.Mode().Perm() != 0o777 {
		t.Errorf("rootfs /tmp: %v, %v; want drwxrwxrwt", tmp.Mode(), err)
	}
	if os.Geteuid() == 0 {
		home, err := os.Stat(filepath.Join(rootfs, "home", "qemu"))
		if err != nil {
			t.Fatal(err)
		}
		if st := home.Sys().(*syscall.Stat_t); st.Uid != 107 || st.Gid != 107 || home.Mode().Perm() != 0o700 {
			t.Errorf("rootfs /home/qemu: uid/gid %d/%d mode %v, want 107/107 0700", st.Uid, st.Gid, home.Mode())
		}
	}
}

func extracted(t *testing.T, spec images.Spec) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(spec.Binary))
	if err := images.ExtractFile(open(t, spec).Image, spec.Binary, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestMetadataFromRepoUsesSourceDateEpoch(t *testing.T) {
	root, err := images.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	m, err := images.MetadataFromRepo(root)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Created.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %s, want SOURCE_DATE_EPOCH 1700000000", m.Created)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := images.MetadataFromRepo(root); err == nil {
		t.Error("a malformed SOURCE_DATE_EPOCH was accepted")
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(data))
}
