// Package guest finds the tiny test guest test/guest/setup.sh builds (a kernel and an initramfs) for the tests that
// boot it in real QEMU, and decides what a test does when something it needs is missing.
package guest

import (
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
)

// The guest's files in its folder.
const (
	Kernel = "vmlinux"
	Initrd = "initramfs.cpio.gz"
)

// Dir is the guest's folder: RUNPOLICY_GUEST_DIR, else <repository>/bin/guest. When the guest is not built there,
// the test is Unavailable.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("RUNPOLICY_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), "bin", "guest")
	}
	for _, f := range []string{Kernel, Initrd} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			Unavailable(t, "guest not built: %v (run test/guest/setup.sh %s)", err, dir)
		}
	}
	return dir
}

// Unavailable skips the test for what it lacks, or fails it when RUNPOLICY_REQUIRE_GUEST=1: make test and CI set
// it, so that a broken setup cannot pass as a skip.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("RUNPOLICY_REQUIRE_GUEST") == "1" {
		t.Fatalf("%s (RUNPOLICY_REQUIRE_GUEST=1)", msg)
	}
	t.Skipf("skipping real-QEMU test: %s", msg)
}

// RepoRoot is the repository's root: the nearest folder up from the test's with a go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (go.mod) not found")
		}
		dir = parent
	}
}

// Args are the guest's kernel arguments: action is what its init does once booted (reboot, poweroff or hang).
func Args(action string) string { return "console=ttyS0 quiet action=" + action }

// VM is a runpolicy VM booting the guest from the kernel boot container image, without network (no pod interface,
// graphics or balloon), 128Mi; action is what the guest does once booted.
func VM(ns, name string, rp v1alpha1.RunPolicy, image, action string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	vm.Spec.RunPolicy = rp
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{Spec: kvv1.VirtualMachineInstanceSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](0),
		Domain: kvv1.DomainSpec{
			Resources: kvv1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")}},
			Devices: kvv1.Devices{AutoattachPodInterface: ptr.To(false), AutoattachGraphicsDevice: ptr.To(false),
				AutoattachMemBalloon: ptr.To(false)},
			Firmware: &kvv1.Firmware{KernelBoot: &kvv1.KernelBoot{KernelArgs: Args(action),
				Container: &kvv1.KernelBootContainer{Image: image, KernelPath: "/" + Kernel, InitrdPath: "/" + Initrd}}},
		},
	}}
	return vm
}

// WriteImage writes the guest in dir (its kernel and initrd) as a kernel boot container image naming ref, an OCI
// archive in tmp, for a real node to import: the files at /vmlinux and /initramfs.cpio.gz, each padded with zeros
// (int32Checksum). It returns the archive's path.
func WriteImage(dir, tmp, ref string) (string, error) {
	files := map[string]string{}
	for _, f := range []string{Kernel, Initrd} {
		files[f] = filepath.Join(tmp, f)
		if err := int32Checksum(filepath.Join(dir, f), files[f]); err != nil {
			return "", err
		}
	}
	archive := filepath.Join(tmp, "tiny-guest.tar")
	return archive, cluster.WriteFilesImage(archive, ref, files)
}

// int32Checksum copies the file src to dst, with zeros appended, four at a time, until its CRC-32 (IEEE) is below
// 2^31. virt-handler records a kernel boot container's files' CRC-32 in the VMI's status
// (status.kernelBootStatus.{kernelInfo,initrdInfo}.checksum, a uint32 in kubevirt.io/api), but KubeVirt's CRD
// declares those fields int32: kube-apiserver refuses every status update of a VMI whose kernel or initrd sums to
// 2^31 or more ("Checked value must be of type integer with format int32"), and the VMI never shows Running. Zeros
// after an ELF kernel or a gzip'd cpio archive change neither for QEMU and the guest kernel.
func int32Checksum(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	for range 256 {
		if crc32.ChecksumIEEE(b) < 1<<31 {
			return os.WriteFile(dst, b, 0o644)
		}
		b = append(b, 0, 0, 0, 0)
	}
	return fmt.Errorf("%s: no padding up to 1 KiB gives a CRC-32 below 2^31", src)
}
