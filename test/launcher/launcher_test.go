//go:build !unit

package launcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

const (
	launcherImage = "quay.io/kubevirt/virt-launcher:test"
	sidecarImage  = "runpolicy.test/hook-sidecar:test"
	guestImage    = "runpolicy.test/tiny-guest:test"
	// runTimeout bounds one guest's whole life (render, launcher start, TCG boot, exit); it is not asserted.
	runTimeout = 4 * time.Minute
	// exitTimeout bounds the wait for the containers to end once the VMI is final.
	exitTimeout = time.Minute
)

// guestVMI is a VMI booting the tiny guest's kernel and initramfs from a kernel boot container, with runpolicy's
// hook sidecar as runpolicy's operator annotates it, no network and no disks. action is what the guest does once
// booted (test/guest/init).
func guestVMI(name, action string) *kvv1.VirtualMachineInstance {
	f := false
	return &kvv1.VirtualMachineInstance{
		TypeMeta: metav1.TypeMeta{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachineInstance"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "default", UID: types.UID(fmt.Sprintf("6f1c2a9e-0000-4000-8000-%012d", time.Now().UnixNano()%1e12)),
			Annotations: map[string]string{"hooks.kubevirt.io/hookSidecars": `[{"image":"` + sidecarImage + `"}]`},
		},
		Spec: kvv1.VirtualMachineInstanceSpec{
			Domain: kvv1.DomainSpec{
				Resources: kvv1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceMemory: resource.MustParse("128Mi"),
				}},
				Devices: kvv1.Devices{AutoattachPodInterface: &f, AutoattachGraphicsDevice: &f, AutoattachMemBalloon: &f},
				Firmware: &kvv1.Firmware{KernelBoot: &kvv1.KernelBoot{
					KernelArgs: "console=ttyS0 quiet action=" + action,
					Container: &kvv1.KernelBootContainer{
						Image: guestImage, KernelPath: "/vmlinux", InitrdPath: "/initramfs.cpio.gz",
					},
				}},
			},
		},
	}
}

// schedule is virt-controller's part once the pod is bound: the pod's identity and node, the VMI Scheduled on it.
func schedule(vmi *kvv1.VirtualMachineInstance, pod *corev1.Pod) {
	pod.Name = "virt-launcher-" + vmi.Name + "-abcde"
	pod.Namespace = vmi.Namespace
	pod.UID = types.UID(strings.Replace(string(vmi.UID), "6f1c2a9e", "0d0d0d0d", 1))
	pod.Spec.NodeName = "node01"
	vmi.Status.Phase = kvv1.Scheduled
	vmi.Status.NodeName = "node01"
	vmi.Status.ActivePods = map[types.UID]string{pod.UID: "node01"}
}

// TestRealLauncherGuestEnd boots the tiny guest in KubeVirt's real virt-launcher (non-root, TCG, kernel boot)
// with runpolicy's real hook sidecar in the real pod layout, and lets the guest reboot or power itself off: the
// VMI ends the way KubeVirt reports it (domain Shutoff/Shutdown, VMI Succeeded) and the sidecar's termination
// message, read as the kubelet reads it, names the guest's reason.
func TestRealLauncherGuestEnd(t *testing.T) {
	e := Require(t)
	for _, tc := range []struct {
		action string
		reason string
		cause  shutdown.Cause
	}{
		{"reboot", shutdown.QEMUGuestReset, shutdown.CauseGuestReset},
		{"poweroff", shutdown.QEMUGuestShutdown, shutdown.CauseGuestShutdown},
	} {
		t.Run(tc.action, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
			defer cancel()
			vmi, pod, err := e.Binaries.Render(ctx, guestVMI("guest-"+tc.action, tc.action), launcherImage, "Sidecar")
			if err != nil {
				t.Fatal(err)
			}
			schedule(vmi, pod)
			type phaseChange struct {
				phase  kvv1.VirtualMachineInstancePhase
				domain Domain
			}
			phases := make(chan phaseChange, 10)
			exited := make(chan []corev1.ContainerStatus, 1)
			r := runner(t, e)
			err = r.Run(ctx, pod, vmi, Callbacks{
				Phase: func(ph kvv1.VirtualMachineInstancePhase, d *Domain) {
					t.Logf("VMI phase %s (domain %s/%s)", ph, d.Status, d.Reason)
					phases <- phaseChange{ph, *d}
				},
				Exited: func(st []corev1.ContainerStatus) { exited <- st },
				Error:  func(err error) { t.Errorf("runner: %v", err) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Sync(pod.UID, vmi); err != nil {
				t.Fatal(err)
			}
			p := r.Pod(pod.UID)
			t.Cleanup(func() {
				if t.Failed() {
					dumpPod(t, p)
				}
			})

			next := func() phaseChange {
				t.Helper()
				select {
				case pc := <-phases:
					return pc
				case <-ctx.Done():
					t.Fatalf("no VMI phase change: %v", ctx.Err())
					return phaseChange{}
				}
			}
			if pc := next(); pc.phase != kvv1.Running {
				t.Fatalf("first phase %s (domain %s/%s), want Running", pc.phase, pc.domain.Status, pc.domain.Reason)
			}
			if pc := next(); pc.phase != kvv1.Succeeded || pc.domain.Status != "Shutoff" || pc.domain.Reason != "Shutdown" {
				t.Errorf("VMI ended %s with domain %s/%s, want Succeeded with Shutoff/Shutdown (as KubeVirt reports a guest's own end)",
					pc.phase, pc.domain.Status, pc.domain.Reason)
			}
			if _, err := p.Handler().WaitEvent(ctx, func(ev DomainEvent) bool { return ev.Domain != nil && ev.Domain.Deleted }); err != nil {
				t.Errorf("no final delete notification from virt-launcher: %v", err)
			}
			if log, err := p.SerialConsoleLog(); err != nil || !strings.Contains(string(log), "RUNPOLICY-GUEST booted action="+tc.action) {
				t.Errorf("serial console log %q (%v), want the guest's boot line", tail(log, 512), err)
			}

			// The containers end on their own once the VMI is final: virt-launcher after its final notification, the
			// sidecar when QEMU's monitor closes. If one does not, the pod is deleted (SIGTERM, then SIGKILL), and
			// what it reports then is checked all the same.
			var statuses []corev1.ContainerStatus
			select {
			case statuses = <-exited:
			case <-time.After(exitTimeout):
				for _, st := range p.ContainerStatuses() {
					if st.State.Running != nil {
						t.Errorf("container %s still running after the VMI ended; deleting the pod", st.Name)
					}
				}
				r.Delete(pod.UID, 10*time.Second)
				statuses = <-exited
			}
			for _, st := range statuses {
				term := st.State.Terminated
				t.Logf("container %s: exit %d %s, message %q", st.Name, term.ExitCode, term.Reason, term.Message)
				if term.ExitCode != 0 {
					t.Errorf("container %s exited %d, want 0", st.Name, term.ExitCode)
				}
				if !strings.HasPrefix(st.Name, "hook-sidecar-") {
					continue
				}
				res := shutdown.Parse(term.Message)
				if res.Cause != tc.cause || res.Event.Reason != tc.reason {
					t.Errorf("sidecar %s: termination message %q gives %s (%q), want %s (%q)",
						st.Name, term.Message, res.Cause, res.Event.Reason, tc.cause, tc.reason)
				}
			}
		})
	}
}

// runner is a Runner for one test, closed at its end.
func runner(t *testing.T, e TestEnv) *Runner {
	t.Helper()
	r, err := NewRunner(RunnerOptions{Binaries: e.Binaries, HookSidecarImage: sidecarImage, HookSidecar: e.HookSidecar,
		GuestDir: e.GuestDir, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func dumpPod(t *testing.T, p *Pod) {
	t.Helper()
	for _, c := range p.Containers() {
		b, _ := os.ReadFile(c.LogPath)
		t.Logf("--- container %s log (last 8 KiB):\n%s", c.Spec.Name, tail(b, 8192))
	}
	b, _ := os.ReadFile(filepath.Join(p.cfg.Dir, "virt-handler.log"))
	t.Logf("--- virt-handler (launcherctl handler) log (last 8 KiB):\n%s", tail(b, 8192))
	t.Logf("--- k8s events from virt-launcher: %+v", p.Handler().K8sEvents())
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
