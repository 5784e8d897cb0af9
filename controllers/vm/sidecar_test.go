//go:build !unit

package vm_test

import (
	"context"
	"encoding/json"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// setKubeVirtConfig writes the KubeVirt CR kubevirt/kubevirt as virt-operator would have it: the feature gates
// in its spec, the deployed version in its status.
func setKubeVirtConfig(ctx context.Context, version string, gates ...string) {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubevirt"}}
	if err := k8s.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		Expect(err).NotTo(HaveOccurred())
	}
	cr := &kvv1.KubeVirt{ObjectMeta: metav1.ObjectMeta{Namespace: "kubevirt", Name: "kubevirt"}}
	err := k8s.Get(ctx, client.ObjectKeyFromObject(cr), cr)
	if apierrors.IsNotFound(err) {
		Expect(k8s.Create(ctx, cr)).To(Succeed())
	} else {
		Expect(err).NotTo(HaveOccurred())
	}
	cr.Spec.Configuration.DeveloperConfiguration = &kvv1.DeveloperConfiguration{FeatureGates: gates}
	Expect(k8s.Update(ctx, cr)).To(Succeed())
	cr.Status.Phase = kvv1.KubeVirtPhaseDeployed
	cr.Status.ObservedKubeVirtVersion = version
	Expect(k8s.Status().Update(ctx, cr)).To(Succeed())
}

func sidecarImages(g Gomega, kv *kvv1.VirtualMachine) []string {
	v, ok := kv.Spec.Template.ObjectMeta.Annotations[vm.AnnotationHookSidecars]
	if !ok {
		return nil
	}
	var list []struct{ Image string }
	g.Expect(json.Unmarshal([]byte(v), &list)).To(Succeed())
	var out []string
	for _, s := range list {
		out = append(out, s.Image)
	}
	return out
}

// Without KubeVirt's Sidecar feature gate, KubeVirt's admission refuses every VM whose template names a hook
// sidecar. runpolicy follows the gate: no sidecar, a visible degraded mode, and the sidecar back once the gate is.
var _ = Describe("Hook sidecar and KubeVirt's Sidecar feature gate", Ordered, func() {
	var ns string
	BeforeAll(func(ctx SpecContext) {
		ns = newNamespace(ctx)
		DeferCleanup(func(ctx SpecContext) { setKubeVirtConfig(ctx, "v1.8.0", "Sidecar") })
	})

	It("adds no sidecar while the gate is off, and says so on every VM that runs", func(ctx SpecContext) {
		setKubeVirtConfig(ctx, "v1.8.0")
		manual := newVM(ns, "manual", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, manual)).To(Succeed())
		Eventually(func(g Gomega) {
			kv := kubevirtVM(ctx, ns, "manual")(g)
			g.Expect(sidecarImages(g, kv)).To(BeEmpty())
			g.Expect(kv.Spec.Template.Spec.Domain.RebootPolicy).To(BeNil(), "KubeVirt v1.8 refuses rebootPolicy without its gate")
		}).Should(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(manual), v1alpha1.ConditionRebootsApplyChanges)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", policy.ReasonFeatureGateDisabled),
			HaveField("Message", ContainSubstring(`add "Sidecar" to spec.configuration.developerConfiguration.featureGates of the KubeVirt CR kubevirt/kubevirt`)),
		))
		Eventually(condition(ctx, client.ObjectKeyFromObject(manual), v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))

		off := newVM(ns, "off", v1alpha1.RunPolicyAlwaysOff)
		Expect(k8s.Create(ctx, off)).To(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(off), v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))
		Consistently(func(g Gomega) []metav1.Condition {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(off), off)).To(Succeed())
			return off.Status.Conditions
		}, "1s").ShouldNot(ContainElement(HaveField("Type", v1alpha1.ConditionRebootsApplyChanges)), "an AlwaysOff VM never reboots")
	})

	It("lets AlwaysOn reboots apply pending changes with rebootPolicy Terminate where KubeVirt accepts it", func(ctx SpecContext) {
		setKubeVirtConfig(ctx, "v1.9.0") // RebootPolicy is Beta, on by default, from v1.9
		on := newVM(ns, "on", v1alpha1.RunPolicyAlwaysOn)
		Expect(k8s.Create(ctx, on)).To(Succeed())
		Eventually(func(g Gomega) *kvv1.RebootPolicy {
			return kubevirtVM(ctx, ns, "on")(g).Spec.Template.Spec.Domain.RebootPolicy
		}).Should(HaveValue(Equal(kvv1.RebootPolicyTerminate)))
		Eventually(condition(ctx, client.ObjectKeyFromObject(on), v1alpha1.ConditionRebootsApplyChanges)).Should(And(
			HaveField("Status", metav1.ConditionTrue), HaveField("Reason", policy.ReasonRebootPolicy)))
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(on), on)).To(Succeed())
		Expect(on.Spec.Template.Spec.Domain.RebootPolicy).To(BeNil(), "the user's spec is not touched")
	})

	It("adds the sidecar to every VM once the gate is turned on", func(ctx SpecContext) {
		setKubeVirtConfig(ctx, "v1.9.0", "Sidecar")
		for _, name := range []string{"manual", "on"} {
			Eventually(func(g Gomega) {
				kv := kubevirtVM(ctx, ns, name)(g)
				g.Expect(sidecarImages(g, kv)).To(ConsistOf(hookImage))
				g.Expect(kv.Spec.Template.Spec.Domain.RebootPolicy).To(BeNil(), "the sidecar ends the VMI on a reboot itself")
			}).Should(Succeed(), name)
			Eventually(condition(ctx, client.ObjectKey{Namespace: ns, Name: name}, v1alpha1.ConditionRebootsApplyChanges)).Should(And(
				HaveField("Status", metav1.ConditionTrue), HaveField("Reason", policy.ReasonSidecarActive)), name)
		}
	})
})
