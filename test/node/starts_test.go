//go:build !unit

package node

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// startQueue runs the chart's maxConcurrentStarts on real starts, under a cap of one: a stopped VM switched to
// AlwaysOn starts; three more switched to AlwaysOn while it starts wait for it, and then start one at a time, lowest
// spec.startOrder first, each once the one before runs. The ones waiting say so (phase Pending, Ready and Synced
// reason WaitingForStartSlot, their place), and their KubeVirt VMs are left Halted until their turn. The chart goes
// back to no cap afterwards.
func startQueue(t *testing.T, env *cluster.Env, admin client.Client, helmArgs []string) {
	g, ns := subtest(t, admin, "starts", 4*time.Minute)
	ctx := t.Context()

	t.Log("four AlwaysOff VMs: first, then a, b and c with startOrder 1, 2 and 3")
	order := []string{"first", "a", "b", "c"}
	for i, name := range order {
		vm := guest.VM(ns.Name, name, v1alpha1.RunPolicyAlwaysOff, guestImage, "hang")
		vm.Spec.StartOrder = int32(i)
		g.Expect(admin.Create(ctx, vm)).To(Succeed())
	}
	for _, name := range order {
		g.Eventually(func(g Gomega) {
			kv := &kvv1.VirtualMachine{}
			g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, kv)).To(Succeed())
			g.Expect(kv.Spec.RunStrategy).To(HaveValue(Equal(kvv1.RunStrategyHalted)))
		}).Should(Succeed())
	}

	t.Log("helm upgrade --set maxConcurrentStarts=1: the operator's new pods lead")
	setMaxConcurrentStarts(ctx, t, g, admin, helmArgs, 1)
	t.Cleanup(func() { setMaxConcurrentStarts(context.Background(), t, NewWithT(t), admin, helmArgs, 0) })
	seen := watchWaiting(ctx, t, env, ns.Name)

	turnOn := func(name string) {
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, vm)).To(Succeed())
		vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOn
		g.Expect(admin.Update(ctx, vm)).To(Succeed())
	}
	t.Log("first switched to AlwaysOn; while its KubeVirt VM starts, c, b and a (the highest startOrder first)")
	turnOn("first")
	g.Eventually(func(g Gomega) {
		kv := &kvv1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "first"}, kv)).To(Succeed())
		g.Expect(kv.Spec.RunStrategy).To(HaveValue(Equal(kvv1.RunStrategyAlways)))
	}).Should(Succeed())
	for _, name := range []string{"c", "b", "a"} {
		turnOn(name)
	}

	t.Log("each starts once the one before runs: first, a, b, c")
	vmis := map[string]*kvv1.VirtualMachineInstance{}
	for _, name := range order {
		vmis[name] = runningVMI(ctx, g, admin, client.ObjectKey{Namespace: ns.Name, Name: name}, "")
	}
	for i := 1; i < len(order); i++ {
		before, next := vmis[order[i-1]], vmis[order[i]]
		ran := runningSince(before)
		g.Expect(ran).NotTo(BeZero(), "%s's VMI records when it ran", before.Name)
		g.Expect(next.CreationTimestamp.Time).NotTo(BeTemporally("<", ran),
			"%s's VMI was created before %s's ran: two VMs started at once under a cap of one", next.Name, before.Name)
	}

	t.Log("the waiting VMs said so, a first in the queue, with their KubeVirt VMs Halted; none does now")
	got, bad := seen.get()
	t.Logf("waiting statuses seen (place, KubeVirt runStrategy): %v", got)
	g.Expect(bad).To(BeEmpty())
	for _, w := range got["first"] {
		g.Expect(w.warmingUp).To(BeTrue(), "first waited for another VM: %v", got) // only for the operator's warm-up
	}
	g.Expect(got["a"]).To(ContainElement(waitingAt{place: 1, strategy: kvv1.RunStrategyHalted}), "%v", got)
	for _, name := range []string{"b", "c"} {
		g.Expect(got[name]).NotTo(BeEmpty(), "%s waited: %v", name, got)
		for _, w := range got[name] {
			g.Expect(w.strategy).To(Equal(kvv1.RunStrategyHalted), "%s: %v", name, got)
		}
	}
	for _, name := range order {
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, vm)).To(Succeed())
		g.Expect(vm.Status.StartQueuePosition).To(BeZero())
		g.Expect(meta.IsStatusConditionTrue(vm.Status.Conditions, v1alpha1.ConditionSynced)).To(BeTrue())
	}
	g.Expect(admin.Delete(ctx, ns)).To(Succeed()) // its guests would slow the subtests that follow
}

// runningSince is when the VMI entered phase Running, as KubeVirt recorded it (zero: never).
func runningSince(vmi *kvv1.VirtualMachineInstance) time.Time {
	for _, p := range vmi.Status.PhaseTransitionTimestamps {
		if p.Phase == kvv1.Running {
			return p.PhaseTransitionTimestamp.Time
		}
	}
	return time.Time{}
}

// setMaxConcurrentStarts upgrades the release with maxConcurrentStarts=n and waits until a pod with that flag leads.
func setMaxConcurrentStarts(ctx context.Context, t *testing.T, g Gomega, admin client.Client, helmArgs []string, n int) {
	out, err := chartrbac.RunHelm(append([]string{"upgrade", release, chartDir(), "--reuse-values",
		"--set", "maxConcurrentStarts=" + strconv.Itoa(n), "--wait", "--timeout", "3m"}, helmArgs...)...)
	g.Expect(err).NotTo(HaveOccurred(), "%s", out)
	flag := "--max-concurrent-starts=" + strconv.Itoa(n)
	deploy := &appsv1.Deployment{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: release}, deploy)).To(Succeed())
	g.Eventually(func(g Gomega) {
		pods := operatorPods(ctx, g, admin, deploy)
		g.Expect(pods).NotTo(BeEmpty())
		for _, p := range pods {
			g.Expect(p.Spec.Containers[0].Args).To(ContainElement(flag), p.Name)
		}
		g.Expect(leaderPod(ctx, g, admin, pods)).NotTo(BeEmpty())
	}, 2*time.Minute).Should(Succeed())
	t.Logf("operator leads with %s", flag)
}

// waitingAt is one status of a VM waiting for a start slot: its place, its KubeVirt VM's runStrategy then, and whether
// it waited for the operator's warm-up (a new leader looks at every VM once before it grants the first slot).
type waitingAt struct {
	place     int32
	strategy  kvv1.VirtualMachineRunStrategy
	warmingUp bool
}

type waitingSeen struct {
	mu  sync.Mutex
	got map[string][]waitingAt
	bad []string
}

// get returns the waiting statuses seen per VM, and those that said it badly.
func (w *waitingSeen) get() (map[string][]waitingAt, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string][]waitingAt{}
	for k, v := range w.got {
		out[k] = slices.Clone(v)
	}
	return out, slices.Clone(w.bad)
}

// watchWaiting records, from a watch of the namespace's runpolicy VMs, every status that says the VM waits for a
// start slot (phase Pending, Ready reason WaitingForStartSlot naming the cap, Synced False with the same reason),
// with its place and its KubeVirt VM's runStrategy as read right then.
func watchWaiting(ctx context.Context, t *testing.T, env *cluster.Env, ns string) *waitingSeen {
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, &v1alpha1.VirtualMachineList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	seen := &waitingSeen{got: map[string][]waitingAt{}}
	go func() {
		for ev := range w.ResultChan() {
			vm, ok := ev.Object.(*v1alpha1.VirtualMachine)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			ready := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionReady)
			synced := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionSynced)
			if ready == nil || ready.Reason != v1alpha1.ReasonWaitingForStartSlot {
				continue
			}
			var bad string
			if vm.Status.Phase != v1alpha1.VirtualMachinePending || !strings.Contains(ready.Message, "at most 1 VMs start at once") ||
				synced == nil || synced.Reason != v1alpha1.ReasonWaitingForStartSlot {
				bad = fmt.Sprintf("%s waits for a start slot with phase %s, Ready %+v, Synced %+v", vm.Name, vm.Status.Phase, ready, synced)
			}
			kv := &kvv1.VirtualMachine{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(vm), kv); err != nil {
				bad = fmt.Sprintf("reading %s's KubeVirt VM: %v", vm.Name, err)
			}
			seen.mu.Lock()
			seen.got[vm.Name] = append(seen.got[vm.Name], waitingAt{place: vm.Status.StartQueuePosition,
				strategy: ptr.Deref(kv.Spec.RunStrategy, ""), warmingUp: strings.Contains(ready.Message, "looks at every VM once")})
			if bad != "" && ctx.Err() == nil {
				seen.bad = append(seen.bad, bad)
			}
			seen.mu.Unlock()
		}
	}()
	t.Cleanup(w.Stop)
	return seen
}
