package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/images"
	"github.com/runpolicy/runpolicy/test/guest"

	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"
)

// DefaultKubeVirtVersion is the KubeVirt version test/kubevirt/build.sh builds when KUBEVIRT_VERSION is unset.
const DefaultKubeVirtVersion = "v1.8.0"

// LauncherComponents are what the launcher runner needs from test/kubevirt/build.sh.
const LauncherComponents = "virt-launcher virt-launcher-monitor launcherctl launcher-image"

// Binaries are KubeVirt's launcher binaries built from kubevirt.io/kubevirt.
type Binaries struct {
	// Dir is bin/kubevirt/$KUBEVIRT_VERSION.
	Dir string
	// Launcherctl is Dir/launcherctl.
	Launcherctl string
	// LauncherImage is the launcher image's tree (Dir/launcher-image).
	LauncherImage Image
}

// Build runs test/kubevirt/build.sh for the launcher components (nothing is rebuilt when they are present) and
// returns them. root is the repository root.
func Build(ctx context.Context, root string) (Binaries, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, "test", "kubevirt", "build.sh"))
	cmd.Env = append(os.Environ(), "COMPONENTS="+LauncherComponents)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("test/kubevirt/build.sh: %w\n%s", err, stderr.String())
	}
	dir := strings.TrimSpace(stdout.String())
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	return Binaries{Dir: dir, Launcherctl: filepath.Join(dir, "launcherctl"),
		LauncherImage: Image{Root: filepath.Join(dir, "launcher-image")}}, nil
}

// Render applies KubeVirt's VMI defaults and renders its launcher pod with virt-controller's own TemplateService
// (launcherctl render), for tests without a control plane. featureGates are the KubeVirt CR's.
func (b Binaries) Render(ctx context.Context, vmi *kvv1.VirtualMachineInstance, launcherImage string,
	featureGates ...string) (*kvv1.VirtualMachineInstance, *corev1.Pod, error) {
	in, err := json.Marshal(vmi)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, b.Launcherctl, "render", "--launcher-image", launcherImage,
		"--feature-gates", strings.Join(featureGates, ","))
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, nil, fmt.Errorf("launcherctl render: %w\n%s", err, stderr.String())
	}
	var out struct {
		VMI *kvv1.VirtualMachineInstance `json:"vmi"`
		Pod *corev1.Pod                  `json:"pod"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return nil, nil, fmt.Errorf("launcherctl render output: %w", err)
	}
	return out.VMI, out.Pod, nil
}

// TestEnv is what the real-launcher tests need: KubeVirt's launcher binaries, the tiny guest and runpolicy's hook
// sidecar.
type TestEnv struct {
	Binaries Binaries
	// GuestDir is the tiny guest (bin/guest, or RUNPOLICY_GUEST_DIR).
	GuestDir string
	// HookSidecar is the hook-sidecar binary: the one in the runpolicy-hook-sidecar image, or RUNPOLICY_HOOK_SIDECAR
	// (another build of it, e.g. an older commit's, run in the same layout).
	HookSidecar string
	// Root is the repository root.
	Root string
}

// Require finds or builds everything the real-launcher tests need. Without root, QEMU, libvirtd or the guest the
// test is skipped, or fails when RUNPOLICY_REQUIRE_GUEST=1 (make test and CI set it, so that a broken setup cannot
// pass as a skip).
func Require(t testing.TB) TestEnv {
	t.Helper()
	if unitBuild {
		t.Fatal("make test-unit (-tags unit) runs no virt-launcher: a test file that needs one carries the " +
			"constraint //go:build !unit")
	}
	if os.Geteuid() != 0 {
		guest.Unavailable(t, "needs root (mount and PID namespaces for the container views)")
	}
	for _, bin := range []string{"qemu-system-x86_64", "libvirtd", "virtlogd", "setpriv"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat("/usr/sbin/" + bin); err != nil {
				guest.Unavailable(t, "%s not found (test/guest/setup.sh installs QEMU and libvirt; setpriv is util-linux)", bin)
			}
		}
	}
	e := TestEnv{Root: guest.RepoRoot(t), GuestDir: guest.Dir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var err error
	if e.Binaries, err = Build(ctx, e.Root); err != nil {
		t.Fatal(err)
	}
	if e.HookSidecar = os.Getenv("RUNPOLICY_HOOK_SIDECAR"); e.HookSidecar == "" {
		// The binary the runpolicy-hook-sidecar image ships (images/), as a cluster would run it.
		if e.HookSidecar, err = images.HookSidecarBinary(ctx, t.TempDir()); err != nil {
			t.Fatalf("building the hook sidecar image: %v", err)
		}
	}
	return e
}
