//go:build !unit

package vm_test

import (
	"context"
	"encoding/json"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
)

func newVM(ns, name string, p v1alpha1.RunPolicy) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.VirtualMachineSpec{
			RunPolicy: p,
			VirtualMachineSpec: kvv1.VirtualMachineSpec{
				Template: &kvv1.VirtualMachineInstanceTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
					Spec: kvv1.VirtualMachineInstanceSpec{
						Domain: kvv1.DomainSpec{
							Memory:  &kvv1.Memory{Guest: ptr.To(resource.MustParse("128Mi"))},
							Devices: kvv1.Devices{Disks: []kvv1.Disk{{Name: "root"}}},
						},
						Volumes: []kvv1.Volume{{Name: "root", VolumeSource: kvv1.VolumeSource{
							ContainerDisk: &kvv1.ContainerDiskSource{Image: "quay.io/containerdisks/fedora:41"},
						}}},
					},
				},
			},
		},
	}
}

func kubevirtVM(ctx context.Context, ns, name string) func(Gomega) *kvv1.VirtualMachine {
	return func(g Gomega) *kvv1.VirtualMachine {
		kv := &kvv1.VirtualMachine{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, kv)).To(Succeed())
		return kv
	}
}

func runStrategy(kv *kvv1.VirtualMachine) kvv1.VirtualMachineRunStrategy {
	if kv.Spec.RunStrategy == nil {
		return ""
	}
	return *kv.Spec.RunStrategy
}

func condition(ctx context.Context, key client.ObjectKey, t string) func(Gomega) *metav1.Condition {
	return func(g Gomega) *metav1.Condition {
		obj := &v1alpha1.VirtualMachine{}
		g.Expect(k8s.Get(ctx, key, obj)).To(Succeed())
		c := meta.FindStatusCondition(obj.Status.Conditions, t)
		g.Expect(c).NotTo(BeNil(), "condition %s", t)
		return c
	}
}

var _ = Describe("VirtualMachine → KubeVirt VirtualMachine", func() {
	var ns string
	BeforeEach(func(ctx SpecContext) { ns = newNamespace(ctx) })

	DescribeTable("creating a VM yields a KubeVirt VM with the policy's runStrategy",
		func(ctx SpecContext, p v1alpha1.RunPolicy, want kvv1.VirtualMachineRunStrategy) {
			obj := newVM(ns, "vm1", p)
			Expect(k8s.Create(ctx, obj)).To(Succeed())

			var kv *kvv1.VirtualMachine
			Eventually(func(g Gomega) {
				kv = kubevirtVM(ctx, ns, "vm1")(g)
				g.Expect(runStrategy(kv)).To(Equal(want))
			}).Should(Succeed())

			By("owning it, with the spec passed through and the hook sidecar in the template")
			Expect(metav1.IsControlledBy(kv, obj)).To(BeTrue())
			Expect(kv.Spec.Running).To(BeNil())
			Expect(kv.Spec.Template.ObjectMeta.Labels).To(HaveKeyWithValue("app", "vm1"))
			Expect(kv.Spec.Template.Spec.Volumes).To(Equal(obj.Spec.Template.Spec.Volumes))
			Expect(kv.Spec.Template.Spec.Domain.Memory.Guest.String()).To(Equal("128Mi"))
			Expect(kv.Annotations).To(HaveKeyWithValue(vm.AnnotationRunPolicy, string(p)))
			var sidecars []map[string]any
			Expect(json.Unmarshal([]byte(kv.Spec.Template.ObjectMeta.Annotations[vm.AnnotationHookSidecars]), &sidecars)).To(Succeed())
			Expect(sidecars).To(ConsistOf(HaveKeyWithValue("image", hookImage)))
			Expect(kv.Spec.Template.ObjectMeta.Annotations).To(HaveKeyWithValue(vm.AnnotationTemplateHash, vm.TemplateHash(obj.Spec.Template)))

			By("reporting Synced, observedGeneration and a phase")
			Eventually(condition(ctx, client.ObjectKeyFromObject(obj), v1alpha1.ConditionSynced)).
				Should(HaveField("Status", metav1.ConditionTrue))
			Eventually(func(g Gomega) {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
				g.Expect(obj.Status.ObservedGeneration).To(Equal(obj.Generation))
				g.Expect(obj.Status.Phase).To(Equal(v1alpha1.VirtualMachineStopped)) // no KubeVirt acts here
			}).Should(Succeed())

			By("an Event for the creation")
			Eventually(func(g Gomega) []string { return eventReasons(ctx, g, ns, "vm1") }).Should(ContainElement(vm.EventCreated))

			By("deleting our VM: the garbage collector removes the KubeVirt VM")
			Expect(k8s.Delete(ctx, obj)).To(Succeed())
			Eventually(func() bool {
				return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(kv), &kvv1.VirtualMachine{}))
			}).Should(BeTrue())
		},
		Entry("AlwaysOff → Halted", v1alpha1.RunPolicyAlwaysOff, kvv1.RunStrategyHalted),
		Entry("AlwaysOn → Always", v1alpha1.RunPolicyAlwaysOn, kvv1.RunStrategyAlways),
		Entry("Manual → Manual", v1alpha1.RunPolicyManual, kvv1.RunStrategyManual),
		// Nothing runs a VMI here, so AlwaysOnUntilStoppedManually stays in its start-up Always until one exists.
		Entry("AlwaysOnUntilStoppedManually → Always until its first VMI", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kvv1.RunStrategyAlways),
	)

	It("defaults runPolicy to AlwaysOnUntilStoppedManually", func(ctx SpecContext) {
		obj := newVM(ns, "defaulted", "")
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		Expect(obj.Spec.RunPolicy).To(Equal(v1alpha1.RunPolicyAlwaysOnUntilStoppedManually))
	})

	It("follows policy changes and pushes template changes", func(ctx SpecContext) {
		obj := newVM(ns, "vm2", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		Eventually(func(g Gomega) kvv1.VirtualMachineRunStrategy { return runStrategy(kubevirtVM(ctx, ns, "vm2")(g)) }).
			Should(Equal(kvv1.RunStrategyManual))

		for _, step := range []struct {
			p    v1alpha1.RunPolicy
			want kvv1.VirtualMachineRunStrategy
		}{
			{v1alpha1.RunPolicyAlwaysOn, kvv1.RunStrategyAlways},
			{v1alpha1.RunPolicyAlwaysOff, kvv1.RunStrategyHalted},
			{v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kvv1.RunStrategyAlways}, // stopped: start it
			{v1alpha1.RunPolicyManual, kvv1.RunStrategyManual},
		} {
			Eventually(func(g Gomega) { // the controller writes status too: retry on conflicts
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
				obj.Spec.RunPolicy = step.p
				g.Expect(k8s.Update(ctx, obj)).To(Succeed())
			}).Should(Succeed())
			Eventually(func(g Gomega) kvv1.VirtualMachineRunStrategy { return runStrategy(kubevirtVM(ctx, ns, "vm2")(g)) }).
				Should(Equal(step.want), "after changing runPolicy to %s", step.p)
		}
		Eventually(func(g Gomega) []string { return eventReasons(ctx, g, ns, "vm2") }).Should(ContainElement(vm.EventRunStrategyChanged))

		By("a template change reaches the KubeVirt VM")
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			obj.Spec.Template.Spec.Domain.Memory.Guest = ptr.To(resource.MustParse("256Mi"))
			g.Expect(k8s.Update(ctx, obj)).To(Succeed())
		}).Should(Succeed())
		Eventually(func(g Gomega) string {
			return kubevirtVM(ctx, ns, "vm2")(g).Spec.Template.Spec.Domain.Memory.Guest.String()
		}).Should(Equal("256Mi"))
	})

	It("overwrites direct edits of the KubeVirt VM", func(ctx SpecContext) {
		obj := newVM(ns, "vm3", v1alpha1.RunPolicyAlwaysOn)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		var kv *kvv1.VirtualMachine
		Eventually(func(g Gomega) { kv = kubevirtVM(ctx, ns, "vm3")(g) }).Should(Succeed())
		// What `virtctl stop` does to an Always VM: patch runStrategy to Halted.
		patch := []byte(`{"spec":{"runStrategy":"Halted"}}`)
		Expect(k8s.Patch(ctx, kv, client.RawPatch("application/merge-patch+json", patch))).To(Succeed())
		Eventually(func(g Gomega) kvv1.VirtualMachineRunStrategy { return runStrategy(kubevirtVM(ctx, ns, "vm3")(g)) }).
			Should(Equal(kvv1.RunStrategyAlways))
	})

	// Server-side apply keeps fields another field manager set: runpolicy reverts them, so the next boot is the
	// runpolicy VM's spec and nothing else.
	It("reverts fields others added to the KubeVirt VM's spec", func(ctx SpecContext) {
		obj := newVM(ns, "vm4", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		var kv *kvv1.VirtualMachine
		Eventually(func(g Gomega) { kv = kubevirtVM(ctx, ns, "vm4")(g) }).Should(Succeed())
		patch := []byte(`{"spec":{"template":{"spec":{"nodeSelector":{"pool":"gpu"},` +
			`"volumes":[{"name":"root","containerDisk":{"image":"quay.io/containerdisks/fedora:41"}},{"name":"stolen","secret":{"secretName":"db"}}]}}}}`)
		Expect(k8s.Patch(ctx, kv, client.RawPatch(types.MergePatchType, patch), client.FieldOwner("someone"))).To(Succeed())
		Eventually(func(g Gomega) {
			kv := kubevirtVM(ctx, ns, "vm4")(g)
			g.Expect(kv.Spec.Template.Spec.NodeSelector).To(BeEmpty())
			g.Expect(kv.Spec.Template.Spec.Volumes).To(HaveLen(1))
			g.Expect(kv.Spec.Template.Spec.Volumes[0].Name).To(Equal("root"))
		}).Should(Succeed())
		Eventually(func(g Gomega) []string { return eventReasons(ctx, g, ns, "vm4") }).Should(ContainElement(vm.EventForeignChangesReverted))
		Eventually(condition(ctx, client.ObjectKeyFromObject(obj), v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))
		By("a VM nobody touches is never rewritten")
		untouched := newVM(ns, "vm5", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, untouched)).To(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(untouched), v1alpha1.ConditionSynced)).Should(HaveField("Status", metav1.ConditionTrue))
		Consistently(func(g Gomega) []string { return eventReasons(ctx, g, ns, "vm5") }, "2s").
			ShouldNot(ContainElement(vm.EventForeignChangesReverted))
	})

	It("does not take over a KubeVirt VM it did not create, unless asked to", func(ctx SpecContext) {
		theirs := &kvv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "legacy"},
			Spec: kvv1.VirtualMachineSpec{
				RunStrategy: ptr.To(kvv1.RunStrategyAlways),
				Template:    newVM(ns, "legacy", "").Spec.Template,
			},
		}
		Expect(k8s.Create(ctx, theirs)).To(Succeed())
		obj := newVM(ns, "legacy", v1alpha1.RunPolicyManual)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(obj), v1alpha1.ConditionSynced)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", v1alpha1.ReasonNameConflict),
			HaveField("Message", ContainSubstring(vm.AnnotationAdopt)),
		))
		Consistently(func(g Gomega) kvv1.VirtualMachineRunStrategy { return runStrategy(kubevirtVM(ctx, ns, "legacy")(g)) }, "1s").
			Should(Equal(kvv1.RunStrategyAlways))

		By("adopting after the annotation")
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(theirs), theirs)).To(Succeed())
		theirs.Annotations = map[string]string{vm.AnnotationAdopt: "true"}
		Expect(k8s.Update(ctx, theirs)).To(Succeed())
		Eventually(func(g Gomega) {
			kv := kubevirtVM(ctx, ns, "legacy")(g)
			g.Expect(runStrategy(kv)).To(Equal(kvv1.RunStrategyManual))
			g.Expect(metav1.IsControlledBy(kv, obj)).To(BeTrue())
		}).Should(Succeed())
	})

	It("reports a spec KubeVirt's schema refuses in Synced=False without hot-looping", func(ctx SpecContext) {
		obj := newVM(ns, "bad-hook", v1alpha1.RunPolicyManual)
		obj.Spec.Template.ObjectMeta.Annotations = map[string]string{vm.AnnotationHookSidecars: "not json"}
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		Eventually(condition(ctx, client.ObjectKeyFromObject(obj), v1alpha1.ConditionSynced)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", v1alpha1.ReasonApplyFailed),
			HaveField("Message", ContainSubstring(vm.AnnotationHookSidecars)),
		))
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(obj), &kvv1.VirtualMachine{}))).To(BeTrue())
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
		rv := obj.ResourceVersion
		Consistently(func(g Gomega) string {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			return obj.ResourceVersion
		}, "2s").Should(Equal(rv), "status must not be rewritten in a loop")
	})
})

var _ = Describe("Admission", func() {
	var ns string
	BeforeEach(func(ctx SpecContext) { ns = newNamespace(ctx) })

	// raw creates an object from a map, so that fields our Go types cannot express reach the apiserver.
	raw := func(ctx context.Context, kind string, obj map[string]any) error {
		u := &unstructured.Unstructured{Object: obj}
		u.SetGroupVersionKind(schema.GroupVersionKind{Group: "runpolicy.io", Version: "v1alpha1", Kind: kind})
		u.SetNamespace(ns)
		return k8s.Create(ctx, u)
	}
	template := map[string]any{"spec": map[string]any{"domain": map[string]any{"devices": map[string]any{}}}}

	DescribeTable("refuses invalid VirtualMachines with a message naming the field",
		func(ctx SpecContext, spec map[string]any, want []string) {
			err := raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": "bad"}, "spec": spec})
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
			for _, w := range want {
				Expect(err.Error()).To(ContainSubstring(w))
			}
		},
		Entry("running", map[string]any{"running": true, "template": template}, []string{"spec.running", "runPolicy"}),
		Entry("runStrategy", map[string]any{"runStrategy": "Always", "template": template}, []string{"spec.runStrategy", "runPolicy"}),
		Entry("unknown runPolicy", map[string]any{"runPolicy": "Sometimes", "template": template}, []string{"spec.runPolicy", "Unsupported value"}),
		Entry("no template", map[string]any{"runPolicy": "Manual"}, []string{"spec.template", "Required"}),
		Entry("malformed template", map[string]any{"template": map[string]any{"spec": map[string]any{"domain": "big"}}},
			[]string{"spec.template.spec.domain", "must be of type object"}),
		Entry("rebootPolicy Reboot with Manual", map[string]any{"runPolicy": "Manual", "template": rebootPolicyTemplate("Reboot")},
			[]string{"spec.template.spec.domain.rebootPolicy", "Reboot", "runPolicy Manual"}),
		Entry("rebootPolicy Reboot with the default policy", map[string]any{"template": rebootPolicyTemplate("Reboot")},
			[]string{"spec.template.spec.domain.rebootPolicy", "AlwaysOnUntilStoppedManually"}),
		Entry("unknown restartApprovalMode", map[string]any{"template": template, "disruptions": map[string]any{"restartApprovalMode": "Sometimes"}},
			[]string{"spec.disruptions.restartApprovalMode", "Unsupported value"}),
		Entry("a window without Automatic", map[string]any{"template": template,
			"disruptions": map[string]any{"window": map[string]any{"start": "02:00", "duration": "1h"}}},
			[]string{"spec.disruptions.window", "restartApprovalMode Automatic"}),
		Entry("a window start that is no time of day", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "25:00", "duration": "1h"}}},
			[]string{"spec.disruptions.window.start", "HH:MM"}),
		Entry("a window longer than a day", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "02:00", "duration": "48h"}}},
			[]string{"spec.disruptions.window.duration", "between 1m and 24h"}),
		Entry("a window duration that is no duration", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "02:00", "duration": "soon"}}},
			[]string{"spec.disruptions.window.duration", "between 1m and 24h"}),
		Entry("a window without a duration", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "02:00"}}},
			[]string{"spec.disruptions.window.duration", "Required"}),
		Entry("a window day that is no day of the week", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "02:00", "duration": "1h",
				"days": []any{"Sat", "Caturday"}}}},
			[]string{"spec.disruptions.window.days", "Unsupported value"}),
		Entry("a window in an unknown time zone", map[string]any{"template": template,
			"disruptions": map[string]any{"restartApprovalMode": "Automatic", "window": map[string]any{"start": "02:00", "duration": "1h",
				"timeZone": "Europe/Berln"}}},
			[]string{"spec.disruptions.window.timeZone", "IANA time zone"}),
	)

	It("accepts a window with restartApprovalMode Automatic", func(ctx SpecContext) {
		Expect(raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": "windowed"}, "spec": map[string]any{
			"template": template, "disruptions": map[string]any{"restartApprovalMode": "Automatic",
				"window": map[string]any{"start": "23:30", "duration": "90m"}}}})).To(Succeed())
		Expect(raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": "weekends"}, "spec": map[string]any{
			"template": template, "disruptions": map[string]any{"restartApprovalMode": "Automatic",
				"window": map[string]any{"start": "22:00", "duration": "4h", "days": []any{"Sat", "Sun"}, "timeZone": "Europe/Berlin"}}}})).To(Succeed())
	})

	DescribeTable("accepts a rebootPolicy that agrees with the policy",
		func(ctx SpecContext, policy, rebootPolicy string) {
			Expect(raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": strings.ToLower(policy + "-" + rebootPolicy)},
				"spec": map[string]any{"runPolicy": policy, "template": rebootPolicyTemplate(rebootPolicy)}})).To(Succeed())
		},
		Entry("Terminate with Manual", "Manual", "Terminate"),
		Entry("Reboot with AlwaysOn (KubeVirt restarts nothing: the user's choice)", "AlwaysOn", "Reboot"),
		Entry("Terminate with AlwaysOn", "AlwaysOn", "Terminate"),
	)

	op := func(name string, spec map[string]any) map[string]any {
		return map[string]any{"metadata": map[string]any{"name": name}, "spec": spec}
	}
	It("refuses force with Start", func(ctx SpecContext) {
		err := raw(ctx, "VirtualMachineOperation", op("start", map[string]any{"virtualMachineName": "vm", "type": "Start", "force": true}))
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec.force is not allowed with type Start"))
	})
	DescribeTable("refuses an operation whose virtualMachineName cannot name a VM",
		func(ctx SpecContext, name string) {
			err := raw(ctx, "VirtualMachineOperation", op("bad-name", map[string]any{"virtualMachineName": name, "type": "Restart"}))
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
			Expect(err.Error()).To(ContainSubstring("spec.virtualMachineName"))
		},
		Entry("a path", "../x"), Entry("dot-dot", ".."), Entry("an escaped slash", "a%2Fb"), Entry("upper case", "Web"),
		Entry("longer than a VM name may be", strings.Repeat("a", 64)),
	)
	It("refuses a VirtualMachine name KubeVirt's labels cannot carry", func(ctx SpecContext) {
		err := raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": strings.Repeat("v", 64)},
			"spec": map[string]any{"template": template}})
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("at most 63 characters"))
		Expect(raw(ctx, "VirtualMachine", map[string]any{"metadata": map[string]any{"name": strings.Repeat("v", 63)},
			"spec": map[string]any{"template": template}})).To(Succeed())
	})
	It("refuses an unknown operation type", func(ctx SpecContext) {
		err := raw(ctx, "VirtualMachineOperation", op("pause", map[string]any{"virtualMachineName": "vm", "type": "Pause"}))
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec.type"))
	})
	It("keeps an operation's spec immutable", func(ctx SpecContext) {
		o := &v1alpha1.VirtualMachineOperation{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "restart"},
			Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "vm", Type: v1alpha1.OperationRestart},
		}
		Expect(k8s.Create(ctx, o)).To(Succeed())
		// A merge patch carries no resourceVersion: the only possible refusal is the CEL rule's.
		err := k8s.Patch(ctx, o, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"force":true}}`)))
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec is immutable"))
	})
})

func rebootPolicyTemplate(p string) map[string]any {
	return map[string]any{"spec": map[string]any{"domain": map[string]any{"devices": map[string]any{}, "rebootPolicy": p}}}
}

func eventReasons(ctx context.Context, g Gomega, ns, name string) []string {
	list := &eventsv1.EventList{}
	g.Expect(k8s.List(ctx, list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}
