//go:build !unit

package e2e

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/fixture"
)

var _ = Describe("Restarts that apply a changed spec (spec.disruptions)", func() {
	changeSpec := func(ctx SpecContext, key client.ObjectKey) {
		patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"e2e.runpolicy.io/rev":"2"}}}}}`)
		Expect(k8s.Patch(ctx, &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}},
			client.RawPatch(types.MergePatchType, patch))).To(Succeed())
	}
	automaticOps := func(ctx SpecContext, g Gomega, ns string) []v1alpha1.VirtualMachineOperation {
		list := &v1alpha1.VirtualMachineOperationList{}
		g.Expect(k8s.List(ctx, list, client.InNamespace(ns), client.MatchingLabels{vm.LabelReason: vm.ReasonApplyChanges})).To(Succeed())
		return list.Items
	}

	DescribeTable("Automatic: runpolicy restarts the running VM through one Restart operation of its own",
		func(ctx SpecContext, p v1alpha1.RunPolicy) {
			ns := newNamespace(ctx)
			obj := fixture.VM(ns, "vm", p)
			obj.Spec.Disruptions = &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic}
			key := client.ObjectKeyFromObject(obj)
			Expect(k8s.Create(ctx, obj)).To(Succeed())
			startAndWait(ctx, obj)
			first, err := getVMI(ctx, key)
			Expect(err).NotTo(HaveOccurred())
			Consistently(func(g Gomega) []v1alpha1.VirtualMachineOperation { return automaticOps(ctx, g, ns) }, "1s").Should(BeEmpty(),
				"nothing to apply, nothing to restart")

			changeSpec(ctx, key)
			var op v1alpha1.VirtualMachineOperation
			Eventually(func(g Gomega) {
				ops := automaticOps(ctx, g, ns)
				g.Expect(ops).To(HaveLen(1))
				op = ops[0]
				g.Expect(op.Status.Phase).To(Equal(v1alpha1.OperationCompleted))
			}).Should(Succeed())
			Expect(op.Spec).To(Equal(v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm", Type: v1alpha1.OperationRestart}))
			Expect(op.Labels).To(HaveKeyWithValue(vm.LabelMadeBy, vm.MadeByRunpolicy))
			Expect(metav1.IsControlledBy(&op, getVM(ctx, Default, key))).To(BeTrue())

			Eventually(func(g Gomega) {
				cur := getVM(ctx, g, key)
				g.Expect(cur.Status.Phase).To(Equal(v1alpha1.VirtualMachineRunning))
				g.Expect(condStatus(cur, v1alpha1.ConditionAwaitingRestart)).To(Equal(metav1.ConditionFalse))
				g.Expect(cur.Status.AutomaticRestartOperation).To(Equal(op.Name))
				vmi, err := getVMI(ctx, key)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(vmi.UID).NotTo(Equal(first.UID))
				g.Expect(vmi.Annotations).To(HaveKeyWithValue("e2e.runpolicy.io/rev", "2"))
			}).Should(Succeed())
			Consistently(func(g Gomega) []v1alpha1.VirtualMachineOperation { return automaticOps(ctx, g, ns) }, "2s").Should(HaveLen(1))
			Expect(node.VMIsCreated(ns, "vm")).To(Equal(2))
		},
		Entry(nil, v1alpha1.RunPolicyAlwaysOnUntilStoppedManually),
		Entry(nil, v1alpha1.RunPolicyManual),
		Entry(nil, v1alpha1.RunPolicyAlwaysOn),
	)

	It("Automatic with a window that is closed: waits for it and says when", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		obj := fixture.VM(ns, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		opens := time.Now().UTC().Add(3 * time.Hour).Truncate(time.Minute)
		obj.Spec.Disruptions = &v1alpha1.Disruptions{RestartApprovalMode: v1alpha1.RestartApprovalAutomatic,
			Window: &v1alpha1.DisruptionWindow{Start: opens.Format("15:04"), Duration: metav1.Duration{Duration: time.Hour}}}
		key := client.ObjectKeyFromObject(obj)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		startAndWait(ctx, obj)

		changeSpec(ctx, key)
		Eventually(func(g Gomega) {
			cur := getVM(ctx, g, key)
			c := meta.FindStatusCondition(cur.Status.Conditions, v1alpha1.ConditionAwaitingRestart)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Message).To(ContainSubstring(opens.Format(time.RFC3339)))
			g.Expect(cur.Status.NextAutomaticRestart).NotTo(BeNil())
			g.Expect(cur.Status.NextAutomaticRestart.Time.Equal(opens)).To(BeTrue(), "next restart %s, want %s", cur.Status.NextAutomaticRestart, opens)
		}).Should(Succeed())
		Consistently(func(g Gomega) []v1alpha1.VirtualMachineOperation { return automaticOps(ctx, g, ns) }, "2s").Should(BeEmpty())
		Expect(node.VMIsCreated(ns, "vm")).To(Equal(1))
	})

	It("Manual (the default) leaves the restart to the user", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		obj := fixture.VM(ns, "vm", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)
		key := client.ObjectKeyFromObject(obj)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		startAndWait(ctx, obj)
		changeSpec(ctx, key)
		Eventually(func(g Gomega) metav1.ConditionStatus {
			return condStatus(getVM(ctx, g, key), v1alpha1.ConditionAwaitingRestart)
		}).Should(Equal(metav1.ConditionTrue))
		Consistently(func(g Gomega) []v1alpha1.VirtualMachineOperation { return automaticOps(ctx, g, ns) }, "2s").Should(BeEmpty())
		vmi, err := getVMI(ctx, key)
		Expect(err).NotTo(HaveOccurred())
		Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
	})
})
