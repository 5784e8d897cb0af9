package controllers

import (
	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
)

// The cache keeps one copy of every launcher pod, KubeVirt VM and VMI in the cluster, so it keeps only what the
// reconcilers read. With thousands of VMs, KubeVirt's VM templates, VMI specs, launcher pod specs and managedFields
// would make most of the operator's memory. Nothing in runpolicy writes these objects back from the cache (the
// KubeVirt VM is server-side applied from runpolicy's own spec), so a trimmed copy is never sent to the API server.

// lastApplied is kubectl's client-side apply annotation: a full copy of the object.
const lastApplied = corev1.LastAppliedConfigAnnotation

// trimLauncherPod keeps a launcher pod's identity, labels, owners and its containers' states (the hook sidecar's
// termination message); its spec and annotations go.
func trimLauncherPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod.ManagedFields = nil
	pod.Annotations = nil
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
// templates users store (a cloud-init script, many disks: megabytes each) would decide the operator's memory.
func trimVM(obj any) (any, error) {
	v, ok := obj.(*v1alpha1.VirtualMachine)
	if !ok {
		return obj, nil
	}
	vm.TrimForCache(v)
	return v, nil
}

// trimKubeVirtVM keeps a KubeVirt VM's metadata, its run strategy and its status; the VMI template and the
// DataVolume templates (runpolicy compares an applied-hash annotation instead) go.
func trimKubeVirtVM(obj any) (any, error) {
	kv, ok := obj.(*kvv1.VirtualMachine)
	if !ok {
		return obj, nil
	}
	kv.ManagedFields = nil
	delete(kv.Annotations, lastApplied)
	kv.Spec = kvv1.VirtualMachineSpec{Running: kv.Spec.Running, RunStrategy: kv.Spec.RunStrategy}
	kv.Status.VolumeRequests = nil
	kv.Status.VolumeSnapshotStatuses = nil
	return kv, nil
}

// trimVMI keeps a VMI's metadata (the template-hash and hook-sidecar annotations), its reboot policy and its phase
// history; the rest of its spec and the
// node-level parts of its status go.
func trimVMI(obj any) (any, error) {
	vmi, ok := obj.(*kvv1.VirtualMachineInstance)
	if !ok {
		return obj, nil
	}
	vmi.ManagedFields = nil
	delete(vmi.Annotations, lastApplied)
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
