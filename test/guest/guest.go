// Package guest finds the tiny test guest test/guest/setup.sh builds (a kernel and an initramfs) for the tests that
// boot it in real QEMU, and decides what a test does when something it needs is missing.
package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
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
