//go:build !unit

package vm_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
)

var _ = Describe("A foreign change runpolicy cannot revert", func() {
	// What the chart's RBAC once did to users: the revert was refused, and the VM said Synced=True while its next
	// start would boot the foreign spec. Here an admission policy refuses the revert, and the VM must say so.
	It("is reported (Synced=False, an Event) until the revert goes through", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		keep := keepNodeSelectorPolicy(ctx, ns)

		obj := newVM(ns, "stuck", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		key := client.ObjectKeyFromObject(obj)
		Eventually(condition(ctx, key, v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))
		kv := kubevirtVM(ctx, ns, "stuck")(Default)
		Expect(k8s.Patch(ctx, kv, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"template":{"spec":{"nodeSelector":{"pool":"gpu"}}}}}`)),
			client.FieldOwner("someone"))).To(Succeed())

		Eventually(condition(ctx, key, v1alpha1.ConditionSynced)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", v1alpha1.ReasonRevertFailed),
			HaveField("Message", And(ContainSubstring("spec.template.spec.nodeSelector"), ContainSubstring("nodeSelector stays")))))
		Eventually(func(g Gomega) []string { return eventReasons(ctx, g, ns, "stuck") }).Should(ContainElement(vm.EventRevertFailed))
		Expect(kubevirtVM(ctx, ns, "stuck")(Default).Spec.Template.Spec.NodeSelector).To(HaveKey("pool"))

		By("once the revert is allowed, it happens and the VM is Synced again")
		Expect(k8s.Delete(ctx, keep)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(kubevirtVM(ctx, ns, "stuck")(g).Spec.Template.Spec.NodeSelector).To(BeEmpty())
			g.Expect(condition(ctx, key, v1alpha1.ConditionSynced)(g)).To(HaveField("Status", metav1.ConditionTrue))
		}).Should(Succeed())
		Expect(eventReasons(ctx, Default, ns, "stuck")).To(ContainElement(vm.EventForeignChangesReverted))
	})
})

var _ = Describe("runpolicy's own label and annotation on the KubeVirt VM", func() {
	// A metadata edit bumps no generation: without a look at the label, runpolicy would never put it back.
	It("are put back when someone removes them", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		obj := newVM(ns, "relabel", v1alpha1.RunPolicyAlwaysOff)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(obj), v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))
		kv := kubevirtVM(ctx, ns, "relabel")(Default)
		patch := `{"metadata":{"labels":{"` + vm.LabelManagedBy + `":null},"annotations":{"` + vm.AnnotationRunPolicy + `":null}}}`
		Expect(k8s.Patch(ctx, kv, client.RawPatch(types.MergePatchType, []byte(patch)), client.FieldOwner("someone"))).To(Succeed())
		Eventually(func(g Gomega) {
			kv := kubevirtVM(ctx, ns, "relabel")(g)
			g.Expect(kv.Labels).To(HaveKeyWithValue(vm.LabelManagedBy, vm.ManagedByValue))
			g.Expect(kv.Annotations).To(HaveKeyWithValue(vm.AnnotationRunPolicy, string(v1alpha1.RunPolicyAlwaysOff)))
		}).Should(Succeed())
		Expect(runStrategy(kubevirtVM(ctx, ns, "relabel")(Default))).To(Equal(kvv1.RunStrategyHalted))
	})
})

// keepNodeSelectorPolicy installs an admission policy that refuses removing spec.template.spec.nodeSelector from
// the KubeVirt VMs of namespace ns, and waits until kube-apiserver enforces it.
func keepNodeSelectorPolicy(ctx SpecContext, ns string) *admissionv1.ValidatingAdmissionPolicy {
	p := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "keep-node-selector-" + ns},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule: admissionv1.Rule{APIGroups: []string{"kubevirt.io"}, APIVersions: []string{"*"},
						Resources: []string{"virtualmachines"}},
				}}},
			},
			Validations: []admissionv1.Validation{{
				Expression: "!has(oldObject.spec.template.spec.nodeSelector) || has(object.spec.template.spec.nodeSelector)",
				Message:    "nodeSelector stays",
			}},
		},
	}
	Expect(k8s.Create(ctx, p)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8s.Delete(ctx, p))).To(Succeed()) })
	b := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: p.Name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}},
	}
	Expect(k8s.Create(ctx, b)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8s.Delete(ctx, b))).To(Succeed()) })

	// kube-apiserver loads policies asynchronously: probe with a KubeVirt VM of nobody's until the removal is refused.
	probe := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe"},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyHalted), Template: newVM(ns, "probe", "").Spec.Template}}
	Expect(k8s.Create(ctx, probe)).To(Succeed())
	Eventually(func() error {
		set := `{"spec":{"template":{"spec":{"nodeSelector":{"pool":"x"}}}}}` // put back what a try before enforcement removed
		if err := k8s.Patch(ctx, probe.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(set))); err != nil {
			return err
		}
		return k8s.Patch(ctx, probe.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"spec":{"template":{"spec":{"nodeSelector":null}}}}`)))
	}).Should(Satisfy(func(err error) bool { return apierrors.IsInvalid(err) || apierrors.IsForbidden(err) }), "the policy is never enforced")
	return p
}
