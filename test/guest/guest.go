// Package guest finds the tiny test guest test/guest/setup.sh builds (a kernel and an initramfs) for the tests that
// boot it in real QEMU, and decides what a test does when something it needs is missing.
package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
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
