//go:build !unit

package node

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
)

// foreignEdits checks, with the operator's pods as the chart installs them (its ClusterRole, nothing more), that a
// direct change of runpolicy's KubeVirt VM is written back, with an Event on the runpolicy VM, and that what
// virt-api's webhooks add to the KubeVirt VM (KubeVirt's defaults) is not taken for such a change. The chart once
// lacked the verb the write-back needs. Deleting the runpolicy VM with --cascade=orphan then leaves the KubeVirt VM,
// released. The VM is AlwaysOff: no guest boots.
func foreignEdits(t *testing.T, admin client.Client) {
	g, ns := subtest(t, admin, "foreign", time.Minute)
	ctx := t.Context()
	owned := guest.VM(ns.Name, "owned", v1alpha1.RunPolicyAlwaysOff, guestImage, "hang")
	g.Expect(admin.Create(ctx, owned)).To(Succeed())
	key := client.ObjectKeyFromObject(owned)
	kv := &kvv1.VirtualMachine{}
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, kv)).To(Succeed())
		g.Expect(metav1.IsControlledBy(kv, owned)).To(BeTrue())
	}).Should(Succeed())

	t.Log("KubeVirt's defaults on the KubeVirt VM are not a foreign change")
	reverted := func(g Gomega) []string {
		var list eventsv1.EventList
		g.Expect(admin.List(ctx, &list, client.InNamespace(ns.Name))).To(Succeed())
		var out []string
		for _, e := range list.Items {
			if e.Regarding.Kind == "VirtualMachine" && e.Regarding.APIVersion == v1alpha1.GroupVersion.String() &&
				e.Reason == vm.EventForeignChangesReverted {
				out = append(out, e.Note)
			}
		}
		return out
	}
	g.Consistently(reverted, "3s").Should(BeEmpty())

	t.Log("a user's direct change of the KubeVirt VM's template is written back, and the VM says so")
	g.Expect(admin.Patch(ctx, kv, client.RawPatch(types.MergePatchType,
		[]byte(`{"spec":{"template":{"spec":{"nodeSelector":{"pool":"gpu"}}}}}`)), client.FieldOwner("kubectl-edit"))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, kv)).To(Succeed())
		g.Expect(kv.Spec.Template.Spec.NodeSelector).To(BeEmpty())
	}).Should(Succeed())
	g.Eventually(reverted).Should(HaveLen(1))
	t.Logf("the Event: %q", reverted(g))

	t.Log("kubectl delete --cascade=orphan: the KubeVirt VM stays, released (the garbage collector removes its " +
		"controller reference, which the chart's admission policy lets only it and the operator do)")
	g.Expect(admin.Delete(ctx, owned, client.PropagationPolicy(metav1.DeletePropagationOrphan))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(admin.Get(ctx, key, &v1alpha1.VirtualMachine{}))).To(BeTrue(), "the runpolicy VM is gone")
		g.Expect(admin.Get(ctx, key, kv)).To(Succeed(), "the KubeVirt VM stays")
		g.Expect(kv.OwnerReferences).To(BeEmpty())
	}).Should(Succeed())
}

// notOurs checks that a runpolicy VM whose name is taken by someone else's KubeVirt VM never becomes a handle on
// that VM: an operation on it fails (VirtualMachineNotManaged), and when their guest powers itself off, runpolicy
// neither cleans their ended VMI up nor records its end.
func notOurs(t *testing.T, env *cluster.Env, admin client.Client) {
	g, ns := subtest(t, admin, "theirs", 3*time.Minute)
	ctx := t.Context()
	t.Log("their KubeVirt VM, started with virtctl; its guest powers itself off once booted")
	theirs := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "theirs"},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual),
			Template: guest.VM(ns.Name, "theirs", v1alpha1.RunPolicyManual, guestImage, "poweroff").Spec.Template}}
	g.Expect(admin.Create(ctx, theirs)).To(Succeed())
	virtctl(ctx, g, env, "start", theirs.Name, "-n", ns.Name)
	key := client.ObjectKeyFromObject(theirs)
	vmi := &kvv1.VirtualMachineInstance{}
	g.Eventually(func() error { return admin.Get(ctx, key, vmi) }).Should(Succeed())

	t.Log("a runpolicy VM of the same name, and a Stop operation on it: refused, theirs is not runpolicy's")
	mine := guest.VM(ns.Name, "theirs", v1alpha1.RunPolicyManual, guestImage, "hang")
	g.Expect(admin.Create(ctx, mine)).To(Succeed())
	stop := &v1alpha1.VirtualMachineOperation{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "stop-theirs"},
		Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "theirs", Type: v1alpha1.OperationStop}}
	g.Expect(admin.Create(ctx, stop)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(stop), stop)).To(Succeed())
		g.Expect(stop.Status.Phase).To(Equal(v1alpha1.OperationFailed))
		c := meta.FindStatusCondition(stop.Status.Conditions, v1alpha1.OperationConditionCompleted)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Reason).To(Equal(v1alpha1.OperationReasonVirtualMachineNotManaged))
	}).Should(Succeed())

	t.Log("their guest powered off: runpolicy neither cleans their ended VMI up nor records its end")
	g.Eventually(func(g Gomega) {
		g.Expect(admin.Get(ctx, key, vmi)).To(Succeed())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Succeeded))
	}).Should(Succeed())
	g.Consistently(func(g Gomega) {
		cur := &kvv1.VirtualMachineInstance{}
		g.Expect(admin.Get(ctx, key, cur)).To(Succeed())
		g.Expect(cur.UID).To(Equal(vmi.UID))
		g.Expect(cur.DeletionTimestamp).To(BeNil())
		g.Expect(admin.Get(ctx, key, mine)).To(Succeed())
		g.Expect(mine.Status.LastShutdown).To(BeNil())
		kv := &kvv1.VirtualMachine{}
		g.Expect(admin.Get(ctx, key, kv)).To(Succeed())
		g.Expect(kv.OwnerReferences).To(BeEmpty())
	}, "5s").Should(Succeed())
}
