//go:build !unit

package node

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// A guestEvent is what ends a running VMI on the real node.
type guestEvent string

const (
	// reboot: the guest reboots itself (busybox reboot -f): QEMU's SHUTDOWN guest-reset.
	reboot guestEvent = "reboot"
	// poweroff: the guest powers itself off (busybox poweroff -f): QEMU's SHUTDOWN guest-shutdown.
	poweroff guestEvent = "poweroff"
	// crash: QEMU dies (SIGKILL on the node), without a SHUTDOWN event.
	crash guestEvent = "crash"
	// podGone: the launcher pod is deleted (as a user or an eviction would), with its default grace period.
	podGone guestEvent = "pod-gone"
)

// outcome is where a VM ends after one guest event.
type outcome struct {
	phase v1alpha1.VirtualMachinePhase
	// vmis is how many VMIs KubeVirt created in all, the first one included.
	vmis int
	// restarts is status.restartCount: restarts made by runpolicy (not by KubeVirt's Always).
	restarts int32
	// sources are what status.lastShutdown.source may be (one of them); none when KubeVirt replaces the VMI before
	// runpolicy sees it end.
	sources []v1alpha1.ShutdownSource
}

func restartedByRunpolicy(s ...v1alpha1.ShutdownSource) outcome {
	return outcome{phase: v1alpha1.VirtualMachineRunning, vmis: 2, restarts: 1, sources: s}
}

func stoppedFor(s ...v1alpha1.ShutdownSource) outcome {
	return outcome{phase: v1alpha1.VirtualMachineStopped, vmis: 1, sources: s}
}

// podGoneSources: a deleted launcher pod takes the sidecar's record with it. The guest (terminationGracePeriodSeconds
// 0) is destroyed at once, QEMU's SHUTDOWN host-signal reaches the sidecar's termination message, and the kubelet
// then removes the pod: runpolicy reads "crash" when its cache still holds the terminated pod as the VMI ends, and
// "unknown" (no reason recorded; a clean end, as virt-handler calls a destroyed domain without ACPI grace) when the
// pod is already gone. Both lead to the same action under every policy (policy.Decide); a fresh-clone CI run saw
// the second.
var podGoneSources = []v1alpha1.ShutdownSource{v1alpha1.ShutdownCrash, v1alpha1.ShutdownUnknown}

// restartedByKubeVirt: runStrategy Always replaces the VMI by itself, and runpolicy records how it ended (s), from
// the sidecar's record in the launcher pod. virt-controller deletes an ended VMI within milliseconds, so runpolicy
// may see the deletion with the end: that is KubeVirt replacing the VMI, never a user's stop. A deleted launcher pod
// takes the record with it, and its VMI is gone as fast: runpolicy may then see neither, and record nothing (s empty;
// one run recorded crash, another nothing).
func restartedByKubeVirt(s ...v1alpha1.ShutdownSource) outcome {
	return outcome{phase: v1alpha1.VirtualMachineRunning, vmis: 2, sources: s}
}

// powerCase is one VM of the power matrix.
type powerCase struct {
	policy v1alpha1.RunPolicy
	event  guestEvent
	want   outcome
}

func (c powerCase) name() string {
	short := map[v1alpha1.RunPolicy]string{v1alpha1.RunPolicyAlwaysOn: "on", v1alpha1.RunPolicyManual: "manual",
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually: "until-stopped", v1alpha1.RunPolicyAlwaysOff: "off"}
	return short[c.policy] + "-" + string(c.event)
}

// powerMatrix is every run policy's end state after each guest event: what runpolicy promises.
var powerMatrix = []powerCase{
	{v1alpha1.RunPolicyAlwaysOn, reboot, restartedByKubeVirt(v1alpha1.ShutdownGuestReset)},
	{v1alpha1.RunPolicyAlwaysOn, poweroff, restartedByKubeVirt(v1alpha1.ShutdownGuestShutdown)},
	{v1alpha1.RunPolicyAlwaysOn, crash, restartedByKubeVirt(v1alpha1.ShutdownCrash)},
	{v1alpha1.RunPolicyAlwaysOn, podGone, restartedByKubeVirt()},
	{v1alpha1.RunPolicyManual, reboot, restartedByRunpolicy(v1alpha1.ShutdownGuestReset)},
	{v1alpha1.RunPolicyManual, poweroff, stoppedFor(v1alpha1.ShutdownGuestShutdown)},
	{v1alpha1.RunPolicyManual, crash, stoppedFor(v1alpha1.ShutdownCrash)},
	{v1alpha1.RunPolicyManual, podGone, stoppedFor(podGoneSources...)},
	{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, reboot, restartedByRunpolicy(v1alpha1.ShutdownGuestReset)},
	{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, poweroff, stoppedFor(v1alpha1.ShutdownGuestShutdown)},
	{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, crash, restartedByRunpolicy(v1alpha1.ShutdownCrash)},
	{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, podGone, restartedByRunpolicy(podGoneSources...)},
}

// powerPolicies runs the power matrix on the real node, all VMs at once: each boots the tiny guest, whose template
// then changes (the guest's next boot hangs: the change waits for a restart), and one event ends its VMI. The guest
// reboots or powers itself off from its kernel arguments; a crash is QEMU killed on the node; a pod gone is the
// launcher pod deleted. Each VM must reach its outcome, a restarted one from the changed template, and none may be
// restarted twice. An AlwaysOff VM beside them never gets a VMI. The Manual VM its guest powered off then starts
// again with virtctl start, and a power schedule stops it at the next minute.
func powerPolicies(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "power", 6*time.Minute)
	ctx := t.Context()
	created := watchVMIs(ctx, t, env, ns.Name)

	t.Log("one VM per policy and event (Manual's started with virtctl start); once its first VMI exists, its template " +
		"changes: the guest's next boot hangs")
	first := map[string]types.UID{}
	for _, c := range powerMatrix {
		action := "hang"
		if c.event == reboot || c.event == poweroff {
			action = string(c.event)
		}
		key := client.ObjectKey{Namespace: ns.Name, Name: c.name()}
		g.Expect(admin.Create(ctx, guest.VM(ns.Name, c.name(), c.policy, guestImage, action))).To(Succeed())
		if c.policy == v1alpha1.RunPolicyManual { // once runpolicy created the KubeVirt VM
			g.Eventually(func() error {
				return runVirtctl(ctx, env, "start", c.name(), "-n", ns.Name)
			}, time.Minute).Should(Succeed())
		}
		vmi := &kvv1.VirtualMachineInstance{}
		g.Eventually(func(g Gomega) {
			g.Expect(admin.Get(ctx, key, vmi)).To(Succeed())
		}).Should(Succeed(), c.name())
		first[c.name()] = vmi.UID
		setAction(ctx, g, admin, key, "hang")
	}
	off := guest.VM(ns.Name, "off", v1alpha1.RunPolicyAlwaysOff, guestImage, "hang")
	g.Expect(admin.Create(ctx, off)).To(Succeed())

	t.Log("the crashes and the pod deletions, once their VMIs run")
	for _, c := range powerMatrix {
		if c.event != crash && c.event != podGone {
			continue
		}
		key := client.ObjectKey{Namespace: ns.Name, Name: c.name()}
		vmi := &kvv1.VirtualMachineInstance{}
		g.Eventually(func(g Gomega) {
			g.Expect(admin.Get(ctx, key, vmi)).To(Succeed())
			g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
		}).Should(Succeed(), c.name())
		if c.event == crash {
			g.Eventually(func() int {
				return env.Node.Kill("qemu-system-x86_64", fmt.Sprintf("guest=%s_%s,", ns.Name, c.name()))
			}).Should(Equal(1), "%s: QEMU killed", c.name())
			continue
		}
		var pods corev1.PodList
		g.Expect(admin.List(ctx, &pods, client.InNamespace(ns.Name),
			client.MatchingLabels{kvv1.CreatedByLabel: string(vmi.UID)})).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(1), "%s: its launcher pod", c.name())
		g.Expect(admin.Delete(ctx, &pods.Items[0])).To(Succeed())
	}

	t.Log("each VM reaches its outcome")
	for _, c := range powerMatrix {
		key := client.ObjectKey{Namespace: ns.Name, Name: c.name()}
		vm := &v1alpha1.VirtualMachine{}
		g.Eventually(func(g Gomega) {
			g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
			g.Expect(vm.Status.Phase).To(Equal(c.want.phase))
			g.Expect(created.count(c.name())).To(Equal(c.want.vmis))
			g.Expect(vm.Status.RestartCount).To(Equal(c.want.restarts))
			if len(c.want.sources) > 0 {
				g.Expect(vm.Status.LastShutdown).NotTo(BeNil())
				g.Expect(vm.Status.LastShutdown.Source).To(BeElementOf(c.want.sources))
				g.Expect(vm.Status.LastShutdown.VMIUID).To(Equal(string(first[c.name()])))
			}
			vmi := &kvv1.VirtualMachineInstance{}
			err := admin.Get(ctx, key, vmi)
			if c.want.phase == v1alpha1.VirtualMachineStopped {
				g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the finished VMI is cleaned up: %v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(vmi.UID).NotTo(Equal(first[c.name()]))
			g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
			g.Expect(vmi.Spec.Domain.Firmware.KernelBoot.KernelArgs).To(Equal(guest.Args("hang")),
				"the new VMI is built from the changed template")
			g.Expect(condStatus(vm, v1alpha1.ConditionAwaitingRestart)).To(Equal(metav1.ConditionFalse))
		}).Should(Succeed(), "%s", c.name())
		t.Logf("%s: %s, %d VMIs, %d restarts by runpolicy, last shutdown %+v", c.name(), vm.Status.Phase,
			created.count(c.name()), vm.Status.RestartCount, vm.Status.LastShutdown)
	}

	t.Log("no VM is restarted twice for one event, and the AlwaysOff VM never ran")
	g.Consistently(func(g Gomega) {
		for _, c := range powerMatrix {
			g.Expect(created.count(c.name())).To(Equal(c.want.vmis), c.name())
		}
		g.Expect(created.count(off.Name)).To(BeZero())
	}, "5s").Should(Succeed())
	g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(off), off)).To(Succeed())
	g.Expect(off.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))

	t.Log("virtctl start: the Manual VM its guest powered off runs again")
	stopped := powerCase{v1alpha1.RunPolicyManual, poweroff, outcome{}}.name()
	virtctl(ctx, g, env, "start", stopped, "-n", ns.Name)
	g.Eventually(func(g Gomega) {
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: stopped}, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
		g.Expect(created.count(stopped)).To(Equal(2))
	}).Should(Succeed())

	t.Log("a power schedule stops it at the next minute, through a Stop operation")
	ps := &v1alpha1.VirtualMachinePowerSchedule{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "stop"},
		Spec: v1alpha1.VirtualMachinePowerScheduleSpec{Schedule: "* * * * *", Action: v1alpha1.OperationStop, Force: true,
			VirtualMachineNames: []string{stopped}}}
	g.Expect(admin.Create(ctx, ps)).To(Succeed())
	g.Eventually(func(g Gomega) {
		var ops v1alpha1.VirtualMachineOperationList
		g.Expect(admin.List(ctx, &ops, client.InNamespace(ns.Name), client.MatchingLabels{"runpolicy.io/schedule": ps.Name})).To(Succeed())
		g.Expect(ops.Items).To(ContainElement(And(HaveField("Spec.VirtualMachineName", stopped),
			HaveField("Spec.Type", v1alpha1.OperationStop), HaveField("Status.Phase", v1alpha1.OperationCompleted))))
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: stopped}, vm)).To(Succeed())
		g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(ps), ps)).To(Succeed())
		g.Expect(ps.Status.LastRun).NotTo(BeNil())
		g.Expect(ps.Status.LastRun.VMs).To(BeEquivalentTo(1))
	}, 3*time.Minute).Should(Succeed())
	g.Expect(admin.Delete(ctx, ps)).To(Succeed())
	// Its running guests (~375 MB and a share of a core each) would slow the subtests that follow.
	g.Expect(admin.Delete(ctx, ns)).To(Succeed())
}

// virtctl runs KubeVirt's virtctl as the cluster's admin.
func virtctl(ctx context.Context, g Gomega, env *cluster.Env, args ...string) {
	g.Expect(runVirtctl(ctx, env, args...)).To(Succeed())
}

func runVirtctl(ctx context.Context, env *cluster.Env, args ...string) error {
	out, err := exec.CommandContext(ctx, env.KubeVirt.Virtctl, append(args, "--kubeconfig", env.Kubeconfig)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("virtctl %v: %w: %s", args, err, out)
	}
	return nil
}

func condStatus(vm *v1alpha1.VirtualMachine, t string) metav1.ConditionStatus {
	for _, c := range vm.Status.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return metav1.ConditionUnknown
}

// vmiCounter counts the VMIs created per name in a namespace, from a watch.
type vmiCounter struct {
	mu   sync.Mutex
	uids map[string][]types.UID
}

func (c *vmiCounter) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.uids[name])
}

// watchVMIs watches the namespace's VMIs until the test ends (its context) and counts each name's UIDs. A watch
// that ends early (kube-apiserver closes watches after a while) is resumed from its last resource version.
func watchVMIs(ctx context.Context, t *testing.T, env *cluster.Env, ns string) *vmiCounter {
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	counter := &vmiCounter{uids: map[string][]types.UID{}}
	var list kvv1.VirtualMachineInstanceList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	rv := list.ResourceVersion
	start := func() (watch.Interface, error) {
		return c.Watch(ctx, &kvv1.VirtualMachineInstanceList{}, client.InNamespace(ns),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}})
	}
	w, err := start()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			for ev := range w.ResultChan() {
				vmi, ok := ev.Object.(*kvv1.VirtualMachineInstance)
				if !ok {
					continue
				}
				rv = vmi.ResourceVersion
				counter.mu.Lock()
				if ev.Type != watch.Bookmark && !slices.Contains(counter.uids[vmi.Name], vmi.UID) {
					counter.uids[vmi.Name] = append(counter.uids[vmi.Name], vmi.UID)
				}
				counter.mu.Unlock()
			}
			if ctx.Err() != nil {
				return
			}
			var err error
			if w, err = start(); err != nil {
				if ctx.Err() == nil {
					t.Errorf("watching VMIs again from %s: %v", rv, err)
				}
				return
			}
		}
	}()
	return counter
}
