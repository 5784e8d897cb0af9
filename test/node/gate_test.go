//go:build !unit

package node

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// hookSidecarsAnnotation is KubeVirt's annotation of a VMI template naming its hook sidecars.
const hookSidecarsAnnotation = "hooks.kubevirt.io/hookSidecars"

// bootBanner is what the tiny guest's init prints on its serial console at every boot.
const bootBanner = "RUNPOLICY-GUEST booted"

// sidecarGate runs runpolicy's degraded mode on real KubeVirt. With KubeVirt's Sidecar feature gate off, virt-api
// refuses any VM whose template names a hook sidecar, so runpolicy renders its VMs without one and says so on each
// VM (RebootsApplyChanges False, FeatureGateDisabled). Without the sidecar, KubeVirt runs QEMU with
// on_reboot=restart: a guest that reboots itself at every boot keeps its VMI Running, boot after boot (its serial
// console shows them), and a guest that powers itself off ends its VMI cleanly, which runpolicy reads as a
// poweroff: that VM stays Stopped. Once the gate is on again, runpolicy adds the sidecar, the next start has it,
// and the guest's reboot restarts the VM from outside. It runs last: it changes the KubeVirt CR every VM shares.
func sidecarGate(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "gate", 4*time.Minute)
	ctx := t.Context()

	t.Log("the Sidecar gate off: virt-api refuses a KubeVirt VM whose template names a hook sidecar")
	g.Expect(env.KubeVirt.SetFeatureGates(ctx, nil)).To(Succeed())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := env.KubeVirt.SetFeatureGates(ctx, []string{"Sidecar"}); err != nil {
			t.Errorf("turning the Sidecar gate back on: %v", err)
		}
	})
	theirs := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "with-sidecar"},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyHalted),
			Template: guest.VM(ns.Name, "with-sidecar", v1alpha1.RunPolicyManual, guestImage, "hang").Spec.Template}}
	theirs.Spec.Template.ObjectMeta.Annotations = map[string]string{hookSidecarsAnnotation: `[{"image":"any"}]`}
	g.Expect(admin.Create(ctx, theirs)).To(MatchError(ContainSubstring("sidecar feature gate is not enabled")))

	t.Log("two AlwaysOnUntilStoppedManually VMs, rendered without the sidecar, each saying why: one guest reboots " +
		"at every boot, the other powers itself off")
	loop := guest.VM(ns.Name, "loop", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "reboot")
	off := guest.VM(ns.Name, "off", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "poweroff")
	for _, vm := range []*v1alpha1.VirtualMachine{loop, off} {
		g.Expect(admin.Create(ctx, vm)).To(Succeed())
	}
	for _, vm := range []*v1alpha1.VirtualMachine{loop, off} {
		key := client.ObjectKeyFromObject(vm)
		g.Eventually(func(g Gomega) {
			kv := &kvv1.VirtualMachine{}
			g.Expect(admin.Get(ctx, key, kv)).To(Succeed())
			g.Expect(kv.Spec.Template.ObjectMeta.Annotations).NotTo(HaveKey(hookSidecarsAnnotation))
			g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
			c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionRebootsApplyChanges)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(policy.ReasonFeatureGateDisabled))
			g.Expect(c.Message).To(ContainSubstring("KubeVirt CR " + env.KubeVirt.Namespace + "/kubevirt"))
		}).Should(Succeed(), vm.Name)
	}

	t.Log("the rebooting guest stays in its VMI: its serial console shows it boot again, the VMI runs on")
	key := client.ObjectKeyFromObject(loop)
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vmi)).To(Succeed())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
	}).Should(Succeed())
	g.Expect(vmi.Annotations).NotTo(HaveKey(hookSidecarsAnnotation))
	boots := consoleUntil(ctx, t, env, ns.Name, loop.Name, 2, 3*time.Minute)
	g.Expect(boots).To(BeNumerically(">=", 2), "the guest booted at least twice within its VMI")
	cur := &kvv1.VirtualMachineInstance{}
	g.Expect(admin.Get(ctx, key, cur)).To(Succeed())
	g.Expect(cur.UID).To(Equal(vmi.UID))
	g.Expect(cur.Status.Phase).To(Equal(kvv1.Running))
	g.Expect(admin.Get(ctx, key, loop)).To(Succeed())
	g.Expect(loop.Status.RestartCount).To(BeZero())
	virtctl(ctx, g, env, "stop", loop.Name, "-n", ns.Name) // its boot loop costs CPU

	t.Log("the guest that powered itself off: a clean end without a sidecar is a poweroff, the VM stays Stopped")
	offKey := client.ObjectKeyFromObject(off)
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, offKey, off)).To(Succeed())
		g.Expect(off.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(off.Status.LastShutdown).NotTo(BeNil())
		g.Expect(off.Status.LastShutdown.Source).To(Equal(v1alpha1.ShutdownGuestShutdown))
		g.Expect(off.Status.LastShutdown.Action).To(Equal(v1alpha1.ShutdownStayedStopped))
	}).Should(Succeed())
	first := types.UID(off.Status.LastShutdown.VMIUID)

	t.Log("the gate on: runpolicy adds the sidecar; the next start has it, and the guest's reboot restarts the VM")
	g.Expect(env.KubeVirt.SetFeatureGates(ctx, []string{"Sidecar"})).To(Succeed())
	g.Eventually(func(g Gomega) {
		kv := &kvv1.VirtualMachine{}
		g.Expect(admin.Get(ctx, offKey, kv)).To(Succeed())
		g.Expect(kv.Spec.Template.ObjectMeta.Annotations).To(HaveKey(hookSidecarsAnnotation))
		g.Expect(admin.Get(ctx, offKey, off)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(off.Status.Conditions, v1alpha1.ConditionRebootsApplyChanges)).To(BeTrue())
	}).Should(Succeed())
	setAction(ctx, g, admin, offKey, "reboot")
	virtctl(ctx, g, env, "start", off.Name, "-n", ns.Name)
	rebooting := &kvv1.VirtualMachineInstance{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, offKey, rebooting)).To(Succeed())
		g.Expect(rebooting.UID).NotTo(Equal(first))
	}).Should(Succeed())
	setAction(ctx, g, admin, offKey, "hang") // its next boot, after runpolicy's restart, keeps running
	g.Expect(rebooting.Annotations).To(HaveKey(hookSidecarsAnnotation))
	restartedAfterReboot(ctx, g, admin, offKey, rebooting.UID, off.Status.RestartCount)
}

// consoleUntil reads the VMI's serial console with `virtctl console` until the guest printed its boot banner want
// times or limit passed, and returns how many times it did. The console shows what the guest prints from the
// connection on, so the boots counted are those after it connected.
func consoleUntil(ctx context.Context, t *testing.T, env *cluster.Env, ns, name string, want int, limit time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.KubeVirt.Virtctl, "console", name, "--namespace", ns, "--kubeconfig", env.Kubeconfig)
	stdin, err := cmd.StdinPipe() // kept open: virtctl leaves the console at the end of its input
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close() }()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	n, read := 0, make(chan []string)
	go func() { // counts the banners and stops virtctl once there are enough; keeps the last lines for the log
		var last []string
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			last = append(last[max(0, len(last)-5):], strings.TrimSpace(sc.Text()))
			if strings.Contains(sc.Text(), bootBanner) {
				if n++; n >= want {
					cancel()
				}
			}
		}
		read <- last
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed once enough boots were seen, or at the limit
	_ = pw.Close()
	last := <-read
	t.Logf("virtctl console %s/%s: %d boots seen; its last lines: %q", ns, name, n, last)
	return n
}
