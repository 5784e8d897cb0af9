package vm

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// The cache's copy of a runpolicy VirtualMachine keeps only what decisions read (TrimForCache): the template and
// the DataVolume templates, which users size as they like (megabytes each), are replaced by two hashes in
// annotations of the cached copy. Those annotations exist only in the operator's memory: runpolicy writes a VM's
// status only, and kube-apiserver keeps everything but the status of a status update. The full object is read from
// the API server when it has to be applied.
//
// Their keys are ones the API server refuses (a key's name may not hold ':'), so no object read from it carries
// them: a user's annotation cannot make the cache take a VM for already trimmed (keeping its template) or feed it a
// hash.
const (
	// AnnotationCachedSpecHash is the hash of the VM's whole spec (SpecHash), in the cached copy only.
	AnnotationCachedSpecHash = "runpolicy.io/cache:spec-hash"
	// AnnotationCachedTemplateHash is TemplateHash of the VM's template, in the cached copy only.
	AnnotationCachedTemplateHash = "runpolicy.io/cache:template-hash"
)

// SpecHash hashes a VM's spec.
func SpecHash(spec *v1alpha1.VirtualMachineSpec) string { return hashJSON(spec) }

// TrimForCache reduces vm's spec, in place, to what the reconcilers read: the policy, the disruptions, the
// template's reboot policy, and the two hashes of the full spec and template. Of its metadata it drops kubectl's
// last-applied copy (a full copy of the object) and managedFields; the cache's transform drops the rest of what
// users store there (controllers/cachetrim.go).
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

// maxCachedHookSidecars is the most hook-sidecar entries a VMI's cached annotation keeps count of: KubeVirt runs a
// container per entry, and a VMI asking for more than this many is taken as one without runpolicy's sidecar (its
// launcher's termination messages are not read).
const maxCachedHookSidecars = 256

// maxImageReference is longer than any valid image reference (a 255-character name, a 128-character tag, a
// digest): a longer image is not runpolicy's.
const maxImageReference = 512

// unreadableHookSidecars stands, in the cache, for a hook-sidecar annotation that is not a JSON list of at most
// maxCachedHookSidecars entries: set, and not one whose last entry is runpolicy's sidecar.
const unreadableHookSidecars = "unreadable"

// HookSidecarsForCache reduces the value of a VMI's hook-sidecar annotation, which comes from the user's template
// (each entry's args, ConfigMaps, volumes: up to the 256 KiB of all of a VMI's annotations), to what decisions read
// of it (ourSidecarContainer, rebootsStayInGuest): whether it is set, how many entries it has, and the last
// entry's image.
func HookSidecarsForCache(v string) string {
	if v == "" {
		return ""
	}
	var list []hookSidecar
	if json.Unmarshal([]byte(v), &list) != nil || len(list) == 0 || len(list) > maxCachedHookSidecars {
		return unreadableHookSidecars
	}
	out := make([]hookSidecar, len(list))
	if last := list[len(list)-1].Image; len(last) <= maxImageReference {
		out[len(out)-1].Image = last
	}
	b, _ := json.Marshal(out)
	return string(b)
}
