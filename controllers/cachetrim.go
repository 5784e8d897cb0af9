package controllers

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
)

// The cache keeps one copy of every launcher pod, KubeVirt VM, VMI, runpolicy VM and VirtualMachineOperation in
// the cluster, so it keeps only what the reconcilers read. With thousands of VMs, KubeVirt's VM templates, VMI specs,
// launcher pod specs and managedFields would make most of the operator's memory; and so would what users store in
// metadata: up to 256 KiB of annotations per object, and labels, finalizers and owner references up to the object's
// size limit, copied by KubeVirt from a VM's template into its VMIs and launcher pods. 400 runpolicy VMs with
// 254 KiB of annotations each were enough to exceed the chart's memory limit. Nothing in runpolicy writes these
// objects back from the cache (the KubeVirt VM is server-side applied from runpolicy's own spec; a runpolicy VM's or
// an operation's status update keeps everything but the status), so a trimmed copy is never sent to the API server.

// kept names the annotations, labels and finalizers of one kind that the reconcilers read: every read of a cached
// object's annotations, labels or finalizers in controllers/ and internal/ is of one of these (a reconciler that
// reads a new key adds it here). Every other key is dropped, whatever its size.
type kept struct{ annotations, labels, finalizers []string }

var (
	keptVM = kept{annotations: []string{vm.AnnotationCachedSpecHash, vm.AnnotationCachedTemplateHash}}
	// The adopt annotation is a user's, read on a KubeVirt VM runpolicy does not own yet; the managed-by label is
	// runpolicy's own, which it restores.
	keptKubeVirtVM = kept{annotations: []string{vm.AnnotationRunPolicy, vm.AnnotationAppliedHash, vm.AnnotationAdopt},
		labels: []string{vm.LabelManagedBy}}
	// virt-controller's finalizer tells that it has seen the VMI end (policy.KubeVirtSawEnd).
	keptVMI = kept{annotations: []string{vm.AnnotationTemplateHash, vm.AnnotationHookSidecars},
		finalizers: []string{kvv1.VirtualMachineControllerFinalizer}}
	// The cache selects launcher pods by the launcher label and indexes them by the created-by label.
	keptLauncherPod = kept{labels: []string{vm.LabelLauncher, vm.LabelCreatedBy}}
	keptOperation   = kept{}
)

// trimMeta reduces an object's metadata to its identity, the keys of k, and its controller reference (the only
// owner reference read); managedFields and other finalizers go.
func trimMeta(m *metav1.ObjectMeta, k kept) {
	m.ManagedFields = nil
	var finalizers []string
	for _, f := range k.finalizers {
		if slices.Contains(m.Finalizers, f) {
			finalizers = append(finalizers, f)
		}
	}
	m.Finalizers = finalizers
	m.Annotations = only(m.Annotations, k.annotations)
	m.Labels = only(m.Labels, k.labels)
	var owners []metav1.OwnerReference
	if ref := metav1.GetControllerOfNoCopy(m); ref != nil {
		owners = []metav1.OwnerReference{*ref}
	}
	m.OwnerReferences = owners
}

// only returns the entries of m under keys, nil when there are none.
func only(m map[string]string, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

// trimLauncherPod keeps a launcher pod's identity, its launcher and created-by labels, its controller and its
// containers' states (the hook sidecar's termination message); its spec and annotations go.
func trimLauncherPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trimMeta(&pod.ObjectMeta, keptLauncherPod)
	pod.Spec = corev1.PodSpec{NodeName: pod.Spec.NodeName}
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Status.ContainerStatuses))
	for _, cs := range pod.Status.ContainerStatuses {
		statuses = append(statuses, corev1.ContainerStatus{Name: cs.Name, State: cs.State, LastTerminationState: cs.LastTerminationState,
			Ready: cs.Ready, RestartCount: cs.RestartCount})
	}
	pod.Status = corev1.PodStatus{Phase: pod.Status.Phase, ContainerStatuses: statuses}
	return pod, nil
}

// trimVM keeps what the reconcilers read of a runpolicy VirtualMachine (vm.TrimForCache): without it, the
// templates users store (a cloud-init script, many disks: megabytes each) would decide the operator's memory. Of its
// metadata only the hashes TrimForCache records stay.
func trimVM(obj any) (any, error) {
	v, ok := obj.(*v1alpha1.VirtualMachine)
	if !ok {
		return obj, nil
	}
	vm.TrimForCache(v)
	trimMeta(&v.ObjectMeta, keptVM)
	return v, nil
}

// trimKubeVirtVM keeps a KubeVirt VM's identity, runpolicy's annotations and label, the adopt annotation, its
// controller, its run strategy and its status; the VMI template and the DataVolume templates (runpolicy compares an
// applied-hash annotation instead) go.
func trimKubeVirtVM(obj any) (any, error) {
	kv, ok := obj.(*kvv1.VirtualMachine)
	if !ok {
		return obj, nil
	}
	trimMeta(&kv.ObjectMeta, keptKubeVirtVM)
	kv.Spec = kvv1.VirtualMachineSpec{Running: kv.Spec.Running, RunStrategy: kv.Spec.RunStrategy}
	kv.Status.VolumeRequests = nil
	kv.Status.VolumeSnapshotStatuses = nil
	return kv, nil
}

// trimVMI keeps a VMI's identity, the template-hash annotation and what decisions read of the hook-sidecar one
// (vm.HookSidecarsForCache), its reboot policy and its phase history; the labels and annotations KubeVirt copies from
// the user's template, the rest of its spec and the node-level parts of its status go.
func trimVMI(obj any) (any, error) {
	vmi, ok := obj.(*kvv1.VirtualMachineInstance)
	if !ok {
		return obj, nil
	}
	trimMeta(&vmi.ObjectMeta, keptVMI)
	if v, ok := vmi.Annotations[vm.AnnotationHookSidecars]; ok {
		vmi.Annotations[vm.AnnotationHookSidecars] = vm.HookSidecarsForCache(v)
	}
	// The reboot policy tells whether a guest reboot could have ended the VMI.
	vmi.Spec = kvv1.VirtualMachineInstanceSpec{Domain: kvv1.DomainSpec{RebootPolicy: vmi.Spec.Domain.RebootPolicy}}
	vmi.Status = kvv1.VirtualMachineInstanceStatus{
		Phase:                     vmi.Status.Phase,
		PhaseTransitionTimestamps: vmi.Status.PhaseTransitionTimestamps,
		Conditions:                vmi.Status.Conditions,
		NodeName:                  vmi.Status.NodeName,
		ActivePods:                vmi.Status.ActivePods,
		Reason:                    vmi.Status.Reason,
	}
	return vmi, nil
}

// trimOperation keeps a VirtualMachineOperation's identity, controller, spec and status: no reconciler reads its
// labels or annotations.
func trimOperation(obj any) (any, error) {
	op, ok := obj.(*v1alpha1.VirtualMachineOperation)
	if !ok {
		return obj, nil
	}
	trimMeta(&op.ObjectMeta, keptOperation)
	return op, nil
}
