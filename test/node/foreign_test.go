//go:build !unit

package node

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/guest"
)

// foreignEdits checks, with the operator's pods as the chart installs them (its ClusterRole, nothing more), that a
// direct change of runpolicy's KubeVirt VM is written back, with an Event on the runpolicy VM, and that what
// virt-api's webhooks add to the KubeVirt VM (KubeVirt's defaults) is not taken for such a change. The chart once
// lacked the verb the write-back needs. The VM is AlwaysOff: no guest boots.
func foreignEdits(t *testing.T, admin client.Client) {
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(time.Minute)
	g.SetDefaultEventuallyPollingInterval(time.Second)
	ctx := t.Context()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "foreign-"}}
	g.Expect(admin.Create(ctx, ns)).To(Succeed())
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
}
