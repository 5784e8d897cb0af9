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
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

	// The cap is cluster-wide: a VM of an earlier subtest whose namespace is still being deleted may be starting
	// (the namespace controller's pod deletion ended its VMI before its KubeVirt VM was marked for deletion, and
	// runpolicy restarted it) and hold the one slot.
	t.Log("the namespaces earlier subtests deleted are gone")
	namespacesGone(ctx, g, admin)

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
		// Always for its first start, then Manual once its VMI exists (under a cap runpolicy makes every start
		// after the first).
		kv := &kvv1.VirtualMachine{}
		g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "first"}, kv)).To(Succeed())
		g.Expect(kv.Spec.RunStrategy).To(HaveValue(BeElementOf(kvv1.RunStrategyAlways, kvv1.RunStrategyManual)))
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
		g.Expect(w.warmingUp).To(BeTrue(), "first waited for another VM: %v", seen.messages("first")) // only for the operator's warm-up
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

	t.Run("a restart goes first", func(t *testing.T) { restartQueue(t, env, admin) })
	t.Run("AlwaysOn VMs come back one at a time", func(t *testing.T) { powerLoss(t, admin) })
}

// powerLoss runs, under a cap of one, what a cluster's power-on asks of AlwaysOn VMs: two of them run (their KubeVirt
// VMs on runStrategy Manual once started: under a cap runpolicy makes their starts, not KubeVirt's Always), and
// their launcher pods are deleted at once, as a node that lost power loses them. Both VMIs fail; runpolicy starts
// them again one at a time, each exactly once: the second new VMI is created only after the first ran.
func powerLoss(t *testing.T, admin client.Client) {
	g, ns := subtest(t, admin, "power-loss", 4*time.Minute)
	ctx := t.Context()
	namespacesGone(ctx, g, admin)

	t.Log("x and y, AlwaysOn, run; their KubeVirt VMs are on Manual")
	names := []string{"x", "y"}
	ended := map[string]*kvv1.VirtualMachineInstance{}
	for _, name := range names {
		g.Expect(admin.Create(ctx, guest.VM(ns.Name, name, v1alpha1.RunPolicyAlwaysOn, guestImage, "hang"))).To(Succeed())
	}
	for _, name := range names {
		key := client.ObjectKey{Namespace: ns.Name, Name: name}
		ended[name] = runningVMI(ctx, g, admin, key, "")
		g.Eventually(func(g Gomega) {
			kv := &kvv1.VirtualMachine{}
			g.Expect(admin.Get(ctx, key, kv)).To(Succeed())
			g.Expect(kv.Spec.RunStrategy).To(HaveValue(Equal(kvv1.RunStrategyManual)))
		}).Should(Succeed())
	}

	t.Log("both launcher pods deleted at once: the VMIs fail, and runpolicy starts them again one at a time")
	for _, name := range names {
		var pods corev1.PodList
		g.Expect(admin.List(ctx, &pods, client.InNamespace(ns.Name),
			client.MatchingLabels{kvv1.CreatedByLabel: string(ended[name].UID)})).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(1), "%s's launcher pod", name)
		g.Expect(admin.Delete(ctx, &pods.Items[0], client.GracePeriodSeconds(0))).To(Succeed())
	}
	again := map[string]*kvv1.VirtualMachineInstance{}
	for _, name := range names {
		key := client.ObjectKey{Namespace: ns.Name, Name: name}
		again[name] = runningVMI(ctx, g, admin, key, ended[name].UID)
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
		g.Expect(vm.Status.RestartCount).To(Equal(int32(1)), "%s restarted once", name)
	}
	firstBack, second := again["x"], again["y"]
	if second.CreationTimestamp.Before(&firstBack.CreationTimestamp) {
		firstBack, second = second, firstBack
	}
	g.Expect(second.CreationTimestamp.Time).NotTo(BeTemporally("<", runningSince(firstBack)),
		"%s's new VMI was created before %s's ran: two VMs started at once under a cap of one", second.Name, firstBack.Name)
	t.Logf("%s back first, %s once it ran", firstBack.Name, second.Name)
	g.Expect(admin.Delete(ctx, ns)).To(Succeed())
}

// namespacesGone waits until no namespace is being deleted.
func namespacesGone(ctx context.Context, g Gomega, admin client.Client) {
	g.Eventually(func(g Gomega) {
		var nss corev1.NamespaceList
		g.Expect(admin.List(ctx, &nss)).To(Succeed())
		for _, n := range nss.Items {
			g.Expect(n.Status.Phase).NotTo(Equal(corev1.NamespaceTerminating), n.Name)
		}
	}).Should(Succeed())
}

// restartQueue runs, under a cap of one, a restart after a reset while the one slot is held: VM held starts and
// stays starting (its PVC waits for a provisioner that never comes, so the scheduler holds its launcher pod), VM
// queued waits for a first start, and VM rebooter, running since before, is reset from outside. Its restart waits
// (phase Pending, WaitingForStartSlot, place 1, ahead of queued; its ended VMI kept, no Start sent to KubeVirt) and
// is made once held is deleted, exactly once, before queued starts. A Start operation of a Manual VM, created after
// queued, waits its turn too (the Starts a power schedule creates are such operations): Pending, reason
// WaitingForStartSlot, its place in its message, no Start sent to KubeVirt; it goes last.
func restartQueue(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "restarts", 4*time.Minute)
	ctx := t.Context()
	namespacesGone(ctx, g, admin)

	t.Log("rebooter, AlwaysOnUntilStoppedManually, runs")
	rebooter := guest.VM(ns.Name, "rebooter", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	g.Expect(admin.Create(ctx, rebooter)).To(Succeed())
	rkey := client.ObjectKeyFromObject(rebooter)
	ended := runningVMI(ctx, g, admin, rkey, "")

	t.Log("held starts and stays starting: its PVC's StorageClass binds at first consumer, and no provisioner serves it")
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ns.Name + "-never"}, Provisioner: "runpolicy.test/never",
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	g.Expect(admin.Create(ctx, sc)).To(Succeed())
	t.Cleanup(func() { _ = admin.Delete(context.Background(), sc) })
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "held"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(sc.Name),
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	g.Expect(admin.Create(ctx, pvc)).To(Succeed())
	held := guest.VM(ns.Name, "held", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	spec := &held.Spec.Template.Spec
	spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks, kvv1.Disk{Name: "held",
		DiskDevice: kvv1.DiskDevice{Disk: &kvv1.DiskTarget{Bus: kvv1.DiskBusVirtio}}})
	spec.Volumes = append(spec.Volumes, kvv1.Volume{Name: "held", VolumeSource: kvv1.VolumeSource{
		PersistentVolumeClaim: &kvv1.PersistentVolumeClaimVolumeSource{
			PersistentVolumeClaimVolumeSource: corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}}})
	g.Expect(admin.Create(ctx, held)).To(Succeed())
	hkey := client.ObjectKeyFromObject(held)
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, hkey, held)).To(Succeed())
		g.Expect(held.Status.Phase).To(Equal(v1alpha1.VirtualMachineStarting))
		g.Expect(held.Status.PrintableStatus).To(Equal(string(kvv1.VirtualMachineStatusWaitingForVolumeBinding)))
	}).Should(Succeed())

	t.Log("queued, a first start, waits for held's slot")
	queued := guest.VM(ns.Name, "queued", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, guestImage, "hang")
	g.Expect(admin.Create(ctx, queued)).To(Succeed())
	qkey := client.ObjectKeyFromObject(queued)
	waiting := func(key client.ObjectKey, place int32) func(g Gomega) {
		return func(g Gomega) {
			vm := &v1alpha1.VirtualMachine{}
			g.Expect(admin.Get(ctx, key, vm)).To(Succeed())
			g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachinePending))
			g.Expect(vm.Status.StartQueuePosition).To(Equal(place))
			ready := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1alpha1.ReasonWaitingForStartSlot))
			g.Expect(ready.Message).To(ContainSubstring("starting now: " + hkey.String()))
		}
	}
	g.Eventually(waiting(qkey, 1)).Should(Succeed())

	t.Log("a Start operation of manual, a stopped Manual VM, waits behind queued")
	manual := guest.VM(ns.Name, "manual", v1alpha1.RunPolicyManual, guestImage, "hang")
	g.Expect(admin.Create(ctx, manual)).To(Succeed())
	mkey := client.ObjectKeyFromObject(manual)
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, mkey, manual)).To(Succeed())
		g.Expect(manual.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped))
	}).Should(Succeed())
	op := &v1alpha1.VirtualMachineOperation{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "start-manual"},
		Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: manual.Name, Type: v1alpha1.OperationStart}}
	g.Expect(admin.Create(ctx, op)).To(Succeed())
	opWaiting := func(ahead int) func(g Gomega) {
		return func(g Gomega) {
			g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(op), op)).To(Succeed())
			g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationPending))
			c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(v1alpha1.OperationReasonWaitingForStartSlot))
			g.Expect(c.Message).To(And(ContainSubstring(fmt.Sprintf("%d VM(s) ahead", ahead)),
				ContainSubstring("starting now: "+hkey.String())))
		}
	}
	g.Eventually(opWaiting(1)).Should(Succeed())

	t.Log("virtctl reset rebooter: its restart waits, first in the queue, ahead of queued and the Start operation")
	virtctl(ctx, g, env, "reset", rebooter.Name, "-n", ns.Name)
	g.Eventually(waiting(rkey, 1)).Should(Succeed())
	g.Eventually(waiting(qkey, 2), time.Minute).Should(Succeed()) // queued's place is rewritten at its recheck
	g.Eventually(opWaiting(2), time.Minute).Should(Succeed())
	t.Logf("%s: %s", op.Name, meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionCompleted).Message)
	g.Consistently(func(g Gomega) {
		vm := &v1alpha1.VirtualMachine{}
		g.Expect(admin.Get(ctx, rkey, vm)).To(Succeed())
		g.Expect(vm.Status.LastShutdown).NotTo(BeNil())
		g.Expect(vm.Status.LastShutdown.VMIUID).To(Equal(string(ended.UID)))
		g.Expect(vm.Status.LastShutdown.Source).To(Equal(v1alpha1.ShutdownHostReset))
		kv := &kvv1.VirtualMachine{}
		g.Expect(admin.Get(ctx, rkey, kv)).To(Succeed())
		g.Expect(kv.Status.StateChangeRequests).To(BeEmpty(), "no restart request sent while the slot is held")
		vmi := &kvv1.VirtualMachineInstance{}
		g.Expect(admin.Get(ctx, rkey, vmi)).To(Succeed())
		g.Expect(vmi.UID).To(Equal(ended.UID))
		g.Expect(vmi.IsFinal()).To(BeTrue())
		g.Expect(admin.Get(ctx, qkey, &kvv1.VirtualMachine{})).NotTo(Succeed(), "queued's KubeVirt VM waits to be created")
		g.Expect(admin.Get(ctx, mkey, kv)).To(Succeed())
		g.Expect(kv.Status.StateChangeRequests).To(BeEmpty(), "no Start sent for the operation while the slot is held")
		g.Expect(admin.Get(ctx, mkey, vmi)).NotTo(Succeed(), "manual has no VMI")
	}, 5*time.Second).Should(Succeed())

	t.Log("held deleted: rebooter is restarted, once; then queued starts")
	g.Expect(admin.Delete(ctx, held)).To(Succeed())
	second := runningVMI(ctx, g, admin, rkey, ended.UID)
	vm := &v1alpha1.VirtualMachine{}
	g.Expect(admin.Get(ctx, rkey, vm)).To(Succeed())
	g.Expect(vm.Status.RestartCount).To(Equal(int32(1)))
	q := runningVMI(ctx, g, admin, qkey, "")
	g.Expect(q.CreationTimestamp.Time).NotTo(BeTemporally("<", runningSince(second)),
		"queued's VMI was created before rebooter's restart ran: two VMs started at once under a cap of one")
	m := runningVMI(ctx, g, admin, mkey, "")
	g.Expect(m.CreationTimestamp.Time).NotTo(BeTemporally("<", runningSince(q)),
		"manual's VMI was created before queued's ran: two VMs started at once under a cap of one")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(op), op)).To(Succeed())
		g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationCompleted))
	}).Should(Succeed())
	g.Expect(admin.Delete(ctx, ns)).To(Succeed())
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
	// msgs are the Ready messages of the waiting statuses, per VM.
	msgs map[string][]string
}

// messages returns the Ready messages of the waiting statuses seen of the VM name.
func (w *waitingSeen) messages(name string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs[name])
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
	seen := &waitingSeen{got: map[string][]waitingAt{}, msgs: map[string][]string{}}
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
			seen.msgs[vm.Name] = append(seen.msgs[vm.Name], ready.Message)
			if bad != "" && ctx.Err() == nil {
				seen.bad = append(seen.bad, bad)
			}
			seen.mu.Unlock()
		}
	}()
	t.Cleanup(w.Stop)
	return seen
}
