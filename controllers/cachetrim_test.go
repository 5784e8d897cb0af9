package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
)

func TestTrimLauncherPodKeepsTerminationMessages(t *testing.T) {
	now := metav1.Now()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "virt-launcher-vm-abcde", Namespace: "ns", UID: "p1", ResourceVersion: "7",
			DeletionTimestamp: &now, Labels: map[string]string{"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "vmi-uid"},
			Annotations:     map[string]string{"k8s.v1.cni.cncf.io/network-status": "[...]"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "VirtualMachineInstance", Name: "vm", UID: "vmi-uid"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{NodeName: "node01", Containers: []corev1.Container{{Name: "compute", Image: "virt-launcher"}}},
		Status: corev1.PodStatus{Phase: corev1.PodFailed, PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "hook-sidecar-0", Image: "hook", ImageID: "sha256:x",
					State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: `{"reason":"guest-reset"}`}}},
				{Name: "compute", LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}},
			}},
	}
	out, err := trimLauncherPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Pod)
	if got.Name != "virt-launcher-vm-abcde" || got.UID != "p1" || got.ResourceVersion != "7" || got.DeletionTimestamp == nil ||
		got.Labels["kubevirt.io/created-by"] != "vmi-uid" || len(got.OwnerReferences) != 1 || got.Status.Phase != corev1.PodFailed {
		t.Fatalf("identity, labels, owners or phase lost: %+v", got)
	}
	if len(got.Status.ContainerStatuses) != 2 || got.Status.ContainerStatuses[0].State.Terminated.Message != `{"reason":"guest-reset"}` ||
		got.Status.ContainerStatuses[1].LastTerminationState.Terminated == nil {
		t.Fatalf("termination states lost: %+v", got.Status.ContainerStatuses)
	}
	if got.ManagedFields != nil || got.Annotations != nil || len(got.Spec.Containers) != 0 || got.Status.PodIP != "" ||
		got.Status.Conditions != nil || got.Status.ContainerStatuses[0].Image != "" {
		t.Fatalf("unused fields kept: %+v", got)
	}
}

func TestTrimKubeVirtVMKeepsStrategyAndStatus(t *testing.T) {
	kv := &kvv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "vm", Generation: 3, Annotations: map[string]string{
			"runpolicy.io/applied-hash": "h", corev1.LastAppliedConfigAnnotation: "{...}"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "VirtualMachine", UID: "u", Controller: ptr.To(true)}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "runpolicy"}}},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual),
			Template:            &kvv1.VirtualMachineInstanceTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}}},
			DataVolumeTemplates: []kvv1.DataVolumeTemplateSpec{{ObjectMeta: metav1.ObjectMeta{Name: "disk"}}}},
		Status: kvv1.VirtualMachineStatus{PrintableStatus: kvv1.VirtualMachineStatusStopped, Ready: true,
			StateChangeRequests: []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}},
			Conditions:          []kvv1.VirtualMachineCondition{{Type: kvv1.VirtualMachineRestartRequired}}},
	}
	out, _ := trimKubeVirtVM(kv)
	got := out.(*kvv1.VirtualMachine)
	if got.Spec.RunStrategy == nil || *got.Spec.RunStrategy != kvv1.RunStrategyManual || got.Generation != 3 ||
		got.Annotations["runpolicy.io/applied-hash"] != "h" || len(got.OwnerReferences) != 1 ||
		got.Status.PrintableStatus != kvv1.VirtualMachineStatusStopped || !got.Status.Ready ||
		len(got.Status.StateChangeRequests) != 1 || len(got.Status.Conditions) != 1 {
		t.Fatalf("fields the reconcilers read were lost: %+v", got)
	}
	if got.Spec.Template != nil || got.Spec.DataVolumeTemplates != nil || got.ManagedFields != nil ||
		got.Annotations[corev1.LastAppliedConfigAnnotation] != "" {
		t.Fatalf("template, DataVolume templates, managedFields or last-applied kept: %+v", got)
	}
}

func TestTrimVMIKeepsPhaseHistoryAndHash(t *testing.T) {
	now := metav1.Now()
	vmi := &kvv1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "vm", UID: "x", DeletionTimestamp: &now,
			Annotations: map[string]string{"runpolicy.io/template-hash": "h"}},
		Spec: kvv1.VirtualMachineInstanceSpec{Domain: kvv1.DomainSpec{CPU: &kvv1.CPU{Cores: 2}}},
		Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Failed,
			PhaseTransitionTimestamps: []kvv1.VirtualMachineInstancePhaseTransitionTimestamp{{Phase: kvv1.Failed, PhaseTransitionTimestamp: now}},
			Interfaces:                []kvv1.VirtualMachineInstanceNetworkInterface{{IP: "10.0.0.1"}}},
	}
	out, _ := trimVMI(vmi)
	got := out.(*kvv1.VirtualMachineInstance)
	if !got.IsFinal() || got.UID != "x" || got.DeletionTimestamp == nil || got.Annotations["runpolicy.io/template-hash"] != "h" ||
		len(got.Status.PhaseTransitionTimestamps) != 1 {
		t.Fatalf("fields the reconcilers read were lost: %+v", got)
	}
	if got.Spec.Domain.CPU != nil || got.Status.Interfaces != nil {
		t.Fatalf("spec or interfaces kept: %+v", got)
	}
}
