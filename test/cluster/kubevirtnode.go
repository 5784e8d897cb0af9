package cluster

import (
	"archive/tar"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/runpolicy/runpolicy/images"
)

// KubeVirt's node half on the real node: virt-handler as the DaemonSet KubeVirt's generator describes, and
// virt-launcher pods, from two images written here with go-containerregistry (no container engine, no registry).
// Both share one base layer, a Debian 12 root filesystem with libvirt, QEMU and the tools virt-handler runs
// (test/kubevirt/build.sh, node-rootfs), where KubeVirt's own images use a CentOS Stream base:
//
//   - virt-launcher: the base, then KubeVirt's virt-launcher, virt-launcher-monitor, configuration files and the
//     virtqemud wrapper (build.sh's launcher-image tree, as test/launcher lays it over the host), node-labeller.sh
//     and what else KubeVirt's image has in /usr/bin (launcherExtras);
//   - virt-handler: the base, then virt-handler and virt-chroot in /usr/bin, where KubeVirt's code looks for them,
//     and the launcher image's users.

// nodeKubeVirtComponents are the build.sh components of the node version: the images' parts, the manifests, and
// virtctl (KubeVirt.Virtctl).
var nodeKubeVirtComponents = []string{"kubevirt-manifests", "virt-launcher", "virt-launcher-monitor", "launcher-image", "virt-handler",
	"virt-chroot", "virt-tail", "virt-freezer", "virt-probe", "libvirt-hook-client", "container-disk", "node-rootfs", "virtctl"}

// launcherExtras are the files KubeVirt's launcher image has in /usr/bin besides the launcher-image tree's.
var launcherExtras = []string{"virt-tail", "virt-freezer", "virt-probe", "libvirt-hook-client", "container-disk"}

// kubeVirtOnNode builds KubeVirt's node images for NodeOptions.KubeVirt, adds them to the node's imports and makes
// the launcher image virt-controller's.
func kubeVirtOnNode(opts *Options) error {
	if opts.Node == nil || !opts.Node.KubeVirt {
		return nil
	}
	if opts.KubeVirt == nil {
		return errors.New("NodeOptions.KubeVirt needs Options.KubeVirt")
	}
	imgs, err := kubeVirtNodeImages()
	if err != nil {
		return err
	}
	opts.KubeVirt.node = imgs
	opts.KubeVirt.LauncherImage = imgs.Launcher
	opts.Node.Images = append(opts.Node.Images, imgs.Archives...)
	return nil
}

// startNode starts the prepared node and, with NodeOptions.KubeVirt, virt-handler's DaemonSet on it.
func (e *Env) startNode(assets string, opts *NodeOptions) error {
	if err := e.Node.start(assets); err != nil {
		return err
	}
	if opts.KubeVirt {
		return e.KubeVirt.startHandler()
	}
	return nil
}

// KubeVirtNodeVersion is the KubeVirt release of the real node's half (virt-handler and virt-launcher):
// $KUBEVIRT_NODE_VERSION, else v1.8.3, the newest patch release of the control plane's minor. v1.8.0's virt-handler
// cannot start a VMI without /dev/kvm even with useEmulation: generateDeviceRulesForVMI requires the device in the
// launcher pod (a regression of kubevirt/kubevirt#16836, fixed by #17251 and, for release-1.8, #17324 in v1.8.1);
// it failed here with "failed opening kvm for path root: /proc/<pid>/root, relative: /dev/kvm". A patch release's
// virt-handler and virt-launcher under the same minor's virt-controller is the skew KubeVirt's own updates go
// through.
func KubeVirtNodeVersion() string {
	if v := os.Getenv("KUBEVIRT_NODE_VERSION"); v != "" {
		return v
	}
	return "v1.8.3"
}

// kubeVirtNodeImages builds (or finds cached) what KubeVirt's node images are made of and the images.
func kubeVirtNodeImages() (*KubeVirtNodeImages, error) {
	kvBin, err := runBuild(filepath.Join(RepoRoot(), "test", "kubevirt", "build.sh"), "KUBEVIRT_VERSION="+KubeVirtNodeVersion(),
		"COMPONENTS="+strings.Join(nodeKubeVirtComponents, " "))
	if err != nil {
		return nil, err
	}
	imgs, err := buildKubeVirtNodeImages(kvBin, KubeVirtNodeVersion())
	if err != nil {
		return nil, err
	}
	imgs.bin = kvBin
	return &imgs, nil
}

// fileCaps are the file capabilities KubeVirt's images set (cmd/virt-launcher/BUILD.bazel, setcaps):
// virt-launcher-monitor runs as qemu (107) and starts virt-launcher with CAP_NET_BIND_SERVICE as an ambient
// capability, which it may raise only if it holds it: security.capability, VFS_CAP_REVISION_2 with the effective
// flag, CAP_NET_BIND_SERVICE (10) permitted.
var fileCaps = map[string]string{"usr/bin/virt-launcher-monitor": vfsCap(10)}

// vfsCap is a security.capability value: struct vfs_cap_data, revision 2, effective, the capability permitted.
func vfsCap(capability uint) string {
	const revision2, effective = 0x02000000, 0x000001
	b := binary.LittleEndian.AppendUint32(nil, revision2|effective)
	b = binary.LittleEndian.AppendUint32(b, 1<<capability) // permitted, capabilities 0-31
	b = binary.LittleEndian.AppendUint32(b, 0)             // inheritable
	b = binary.LittleEndian.AppendUint32(b, 0)             // permitted, 32-63
	b = binary.LittleEndian.AppendUint32(b, 0)             // inheritable
	return string(b)
}

// KubeVirtNodeImages are the references and archives of KubeVirt's node images.
type KubeVirtNodeImages struct {
	Launcher, Handler string
	Archives          []string
	// bin holds the node version's build, whose kubevirt-manifests writes the cluster's KubeVirt manifests: the
	// CRDs must be the node half's (v1.8.0's VMI schema refuses the status v1.8.3's virt-handler writes:
	// "Checked value must be of type integer with format int32 in status.kernelBootStatus").
	bin string
}

// buildKubeVirtNodeImages writes the images into bin/kubevirt/<version>/node-images, unless the archives there are
// newer than everything they are made of.
func buildKubeVirtNodeImages(kvBin, version string) (KubeVirtNodeImages, error) {
	out := KubeVirtNodeImages{Launcher: "runpolicy.test/virt-launcher:" + version,
		Handler: "runpolicy.test/virt-handler:" + version}
	dir := filepath.Join(kvBin, "node-images")
	launcherTar, handlerTar := filepath.Join(dir, "virt-launcher.tar"), filepath.Join(dir, "virt-handler.tar")
	out.Archives = []string{launcherTar, handlerTar}
	binaries := slices.Concat([]string{"virt-launcher", "virt-launcher-monitor", "virt-handler", "virt-chroot"}, launcherExtras)
	inputs := make([]string, 0, len(binaries)+3)
	inputs = append(inputs, filepath.Join(kvBin, "node-rootfs", ".runpolicy-packages"), filepath.Join(kvBin, "launcher-image", ".complete"),
		filepath.Join(RepoRoot(), "test", "cluster", "kubevirtnode.go")) // how the images are assembled
	for _, c := range binaries {
		inputs = append(inputs, filepath.Join(kvBin, c))
	}
	if newer(out.Archives, inputs) {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return out, err
	}
	work, err := os.MkdirTemp(dir, ".layers-")
	if err != nil {
		return out, err
	}
	defer func() { _ = os.RemoveAll(work) }()
	base, err := dirLayer(filepath.Join(kvBin, "node-rootfs"), work, nil)
	if err != nil {
		return out, fmt.Errorf("the node images' base layer: %w", err)
	}
	src, err := kubeVirtSource(version)
	if err != nil {
		return out, err
	}
	extras := map[string]string{
		"usr/bin/node-labeller.sh": filepath.Join(src, "cmd", "virt-launcher", "node-labeller", "node-labeller.sh"),
	}
	for _, b := range launcherExtras {
		extras["usr/bin/"+b] = filepath.Join(kvBin, b)
	}
	launcher, err := dirLayer(filepath.Join(kvBin, "launcher-image"), work, extras)
	if err != nil {
		return out, err
	}
	// virt-handler hands the launcher's sockets to qemu (107): the launcher image's users, in both.
	handler, err := writeLayer(work, func(tw *tar.Writer) error {
		for _, f := range []string{"etc/passwd", "etc/group"} {
			if err := addFile(tw, filepath.Join(kvBin, "launcher-image", f), f); err != nil {
				return err
			}
		}
		return addFiles(tw, map[string]string{
			"usr/bin/virt-handler": filepath.Join(kvBin, "virt-handler"),
			"usr/bin/virt-chroot":  filepath.Join(kvBin, "virt-chroot"),
		})
	})
	if err != nil {
		return out, err
	}
	for _, img := range []struct {
		ref, archive string
		top          v1.Layer
		entrypoint   []string
	}{
		{out.Launcher, launcherTar, launcher, []string{"/usr/bin/virt-launcher-monitor"}},
		{out.Handler, handlerTar, handler, []string{"/usr/bin/virt-handler"}},
	} {
		cfg := v1.Config{Entrypoint: img.entrypoint, WorkingDir: "/",
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
		if err := writeImage(img.archive, img.ref, cfg, base, img.top); err != nil {
			return out, fmt.Errorf("image %s: %w", img.ref, err)
		}
	}
	return out, nil
}

// newer tells whether every file of outs exists and is newer than every file of ins.
func newer(outs, ins []string) bool {
	oldest := time.Time{}
	for i, o := range outs {
		st, err := os.Stat(o)
		if err != nil {
			return false
		}
		if i == 0 || st.ModTime().Before(oldest) {
			oldest = st.ModTime()
		}
	}
	for _, in := range ins {
		st, err := os.Stat(in)
		if err != nil || st.ModTime().After(oldest) {
			return false
		}
	}
	return true
}

// kubeVirtSource returns KubeVirt's module directory in the module cache.
func kubeVirtSource(version string) (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", "kubevirt.io/kubevirt@"+version).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download kubevirt.io/kubevirt@%s: %w", version, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("go mod download kubevirt.io/kubevirt@%s: no module directory (%v)", version, err)
	}
	return mod.Dir, nil
}

// dirLayer writes the tree under root, plus extra files (path in the layer → file on the host), as a gzip'd tar
// layer file in tmpDir (the caller removes it once the image is written), with the files' owners and modes (a root
// filesystem's setuid bits and users' files).
func dirLayer(root, tmpDir string, extra map[string]string) (v1.Layer, error) {
	return writeLayer(tmpDir, func(tw *tar.Writer) error {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil || rel == "." || rel == ".complete" || rel == ".runpolicy-packages" {
				return err
			}
			return addFile(tw, p, rel)
		})
		if err != nil {
			return err
		}
		return addFiles(tw, extra)
	})
}

// filesLayer writes a layer of the given files (path in the layer → file on the host).
func filesLayer(tmpDir string, files map[string]string) (v1.Layer, error) {
	return writeLayer(tmpDir, func(tw *tar.Writer) error { return addFiles(tw, files) })
}

// addFiles adds executables (their mode 0755 whatever the host's: the module cache's files are read-only).
func addFiles(tw *tar.Writer, files map[string]string) error {
	for _, rel := range slices.Sorted(maps.Keys(files)) {
		if err := addFileMode(tw, files[rel], rel, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func writeLayer(tmpDir string, fill func(*tar.Writer) error) (v1.Layer, error) {
	f, err := os.CreateTemp(tmpDir, ".layer-*.tar.gz")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	if err := fill(tw); err != nil {
		return nil, err
	}
	if err := errors.Join(tw.Close(), zw.Close(), f.Close()); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(f.Name(), tarball.WithMediaType(types.OCILayer))
}

// addFile adds the file at host (not followed if a symlink) as rel, with its owner and mode.
func addFile(tw *tar.Writer, host, rel string) error { return addFileMode(tw, host, rel, 0) }

// addFileMode is addFile with the permission bits mode, unless 0.
func addFileMode(tw *tar.Writer, host, rel string, mode int64) error {
	st, err := os.Lstat(host)
	if err != nil {
		return err
	}
	link := ""
	if st.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(host); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(st, link)
	if err != nil {
		return err
	}
	hdr.Name = filepath.ToSlash(rel)
	if st.IsDir() && !strings.HasSuffix(hdr.Name, "/") {
		hdr.Name += "/"
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		hdr.Uid, hdr.Gid = int(sys.Uid), int(sys.Gid)
	}
	hdr.Uname, hdr.Gname = "", ""
	if mode != 0 {
		hdr.Mode = mode
	}
	if c, ok := fileCaps[hdr.Name]; ok {
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": c}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(host)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	_, err = io.Copy(tw, f)
	return err
}

// WriteFilesImage writes an image of one layer holding files (path in the image → file on the host) as an OCI
// archive naming ref: e.g. a kernel boot container (KubeVirt's spec.domain.firmware.kernelBoot.container), whose
// files KubeVirt reads and whose process it supplies.
func WriteFilesImage(archive, ref string, files map[string]string) error {
	work, err := os.MkdirTemp(filepath.Dir(archive), ".layers-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	layer, err := filesLayer(work, files)
	if err != nil {
		return err
	}
	return writeImage(archive, ref, v1.Config{}, layer)
}

// writeImage writes an OCI image of layers with the container config cfg as an archive naming ref, dated the Unix
// epoch. The layers' files may go once it returns.
func writeImage(archive, ref string, cfg v1.Config, layers ...v1.Layer) error {
	created := time.Unix(0, 0).UTC()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{Architecture: images.Platform.Architecture,
		OS: images.Platform.OS, Created: v1.Time{Time: created}, Config: cfg, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		return err
	}
	return images.WriteArchive(archive, img, ref, created)
}
