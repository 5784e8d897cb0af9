//go:build !unit

package vm_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// A user who may create runpolicy VMs must not be able to power someone else's KubeVirt VM through a name
// conflict: runpolicy acts only on the KubeVirt VMs it controls.
var _ = Describe("A KubeVirt VM runpolicy does not control", func() {
	It("is never acted on: its ended VMI stays, no restart is asked for", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		theirs := &kvv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "theirs"},
			Spec:       kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual), Template: newVM(ns, "theirs", "").Spec.Template},
		}
		Expect(k8s.Create(ctx, theirs)).To(Succeed())
		theirs.Status.PrintableStatus = kvv1.VirtualMachineStatusRunning
		theirs.Status.Ready = true
		Expect(k8s.Status().Update(ctx, theirs)).To(Succeed())
		// Their VMI, ended (a guest poweroff: Manual keeps it until someone deletes or restarts it). KubeVirt's VMI
		// CRD has no status subresource, so the status is written with the object.
		vmi := &kvv1.VirtualMachineInstance{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "theirs", OwnerReferences: []metav1.OwnerReference{
				*metav1.NewControllerRef(theirs, kvv1.VirtualMachineGroupVersionKind)}},
			Spec: theirs.Spec.Template.Spec,
		}
		Expect(k8s.Create(ctx, vmi)).To(Succeed())
		vmi.Status.Phase = kvv1.Succeeded
		Expect(k8s.Update(ctx, vmi)).To(Succeed())

		Expect(k8s.Create(ctx, newVM(ns, "theirs", v1alpha1.RunPolicyManual))).To(Succeed())
		Eventually(condition(ctx, client.ObjectKey{Namespace: ns, Name: "theirs"}, v1alpha1.ConditionSynced)).
			Should(HaveField("Reason", v1alpha1.ReasonNameConflict))
		Consistently(func(g Gomega) {
			got := &kvv1.VirtualMachineInstance{}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(vmi), got)).To(Succeed())
			g.Expect(got.DeletionTimestamp).To(BeNil(), "runpolicy deleted the foreign VM's VMI")
			vm := &v1alpha1.VirtualMachine{}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(vmi), vm)).To(Succeed())
			g.Expect(vm.Status.LastShutdown).To(BeNil(), "runpolicy judged the foreign VM's VMI")
			g.Expect(vm.Status.HandledVMIUID).To(BeEmpty())
			// Nothing of their VM shows to whoever reads this one.
			g.Expect(vm.Status.PrintableStatus).To(BeEmpty(), "the foreign VM's printableStatus")
			g.Expect(vm.Status.Phase).To(Equal(v1alpha1.VirtualMachinePending), "the foreign VM's phase")
			for _, c := range vm.Status.Conditions {
				if c.Type == v1alpha1.ConditionReady || c.Type == v1alpha1.ConditionAwaitingRestart {
					g.Expect(c.Status).NotTo(Equal(metav1.ConditionTrue), "condition %s reads the foreign VM", c.Type)
				}
				g.Expect(c.Message).NotTo(ContainSubstring(string(kvv1.VirtualMachineStatusRunning)), c.Type)
			}
		}, "3s").Should(Succeed())
	})
})
