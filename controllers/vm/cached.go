package vm

import (
	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// The cache's copy of a runpolicy VirtualMachine keeps only what decisions read (TrimForCache): the template and
// the DataVolume templates, which users size as they like (megabytes each), are replaced by two hashes in
// annotations of the cached copy. Those annotations exist only in the operator's memory: runpolicy writes a VM's
// status only, and kube-apiserver keeps everything but the status of a status update. The full object is read from
// the API server when it has to be applied.
const (
	// AnnotationCachedSpecHash is the hash of the VM's whole spec (SpecHash), in the cached copy only.
	AnnotationCachedSpecHash = "cache.runpolicy.io/spec-hash"
	// AnnotationCachedTemplateHash is TemplateHash of the VM's template, in the cached copy only.
	AnnotationCachedTemplateHash = "cache.runpolicy.io/template-hash"
)

// SpecHash hashes a VM's spec.
func SpecHash(spec *v1alpha1.VirtualMachineSpec) string { return hashJSON(spec) }

// TrimForCache reduces vm, in place, to what the reconcilers read: identity, labels, annotations (kubectl's
// last-applied copy, a full copy of the object, dropped), the policy, the disruptions, the template's reboot policy, the two hashes, and the status.
func TrimForCache(vm *v1alpha1.VirtualMachine) {
	if _, done := vm.Annotations[AnnotationCachedSpecHash]; done {
		return
	}
	ann := make(map[string]string, len(vm.Annotations)+2)
	for k, v := range vm.Annotations {
		if k != corev1.LastAppliedConfigAnnotation {
			ann[k] = v
		}
	}
	ann[AnnotationCachedSpecHash] = SpecHash(&vm.Spec)
	var template *kvv1.VirtualMachineInstanceTemplateSpec
	if vm.Spec.Template != nil {
		ann[AnnotationCachedTemplateHash] = TemplateHash(vm.Spec.Template)
		template = &kvv1.VirtualMachineInstanceTemplateSpec{
			Spec: kvv1.VirtualMachineInstanceSpec{Domain: kvv1.DomainSpec{RebootPolicy: vm.Spec.Template.Spec.Domain.RebootPolicy}},
		}
	}
	vm.Annotations = ann
	vm.ManagedFields = nil
	vm.Spec = v1alpha1.VirtualMachineSpec{RunPolicy: vm.Spec.RunPolicy, Disruptions: vm.Spec.Disruptions,
		VirtualMachineSpec: kvv1.VirtualMachineSpec{Template: template}}
}

// trimmed tells whether vm is the cache's trimmed copy.
func trimmed(vm *v1alpha1.VirtualMachine) bool {
	_, ok := vm.Annotations[AnnotationCachedSpecHash]
	return ok
}

// specHashOf is SpecHash of vm's full spec, from the cached copy's annotation when trimmed.
func specHashOf(vm *v1alpha1.VirtualMachine) string {
	if h, ok := vm.Annotations[AnnotationCachedSpecHash]; ok {
		return h
	}
	return SpecHash(&vm.Spec)
}

// templateHashOf is TemplateHash of vm's template ("" without one), from the cached copy's annotation when trimmed.
func templateHashOf(vm *v1alpha1.VirtualMachine) string {
	if trimmed(vm) {
		return vm.Annotations[AnnotationCachedTemplateHash]
	}
	if vm.Spec.Template == nil {
		return ""
	}
	return TemplateHash(vm.Spec.Template)
}

// applyInputs are what the applied KubeVirt VM is built from; their hash (recorded on the KubeVirt VM) tells that
// nothing needs applying without reading the VM's full spec.
type applyInputs struct {
	UID             string `json:"uid"`
	SpecHash        string `json:"spec"`
	RunStrategy     string `json:"runStrategy"`
	HookImage       string `json:"hookImage,omitempty"`
	RebootTerminate bool   `json:"rebootTerminate,omitempty"`
	// Format changes whenever desiredKubeVirtVM builds a different object from the same inputs.
	Format int `json:"format"`
}

// applyFormat is applyInputs.Format's current value.
const applyFormat = 2

func (in applyInputs) hash() string { return hashJSON(in) }
