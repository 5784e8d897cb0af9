package vm

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// setCondition sets a condition with the VM's generation.
func setCondition(vm *v1alpha1.VirtualMachine, t string, s metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: vm.Generation,
	})
}

func removeCondition(vm *v1alpha1.VirtualMachine, t string) {
	meta.RemoveStatusCondition(&vm.Status.Conditions, t)
}

// deriveStatus fills the parts of status that follow from the KubeVirt VM and VMI alone.
func deriveStatus(vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance, desiredHash string, now time.Time) {
	backoff := vm.Status.RestartNotBefore != nil && vm.Status.RestartNotBefore.After(now) && !policy.VMIActive(vmi)
	// While runpolicy restarts a VMI, status reads Starting until KubeVirt runs the new one, and KubeVirt's
	// passing states (old VMI stopping, new one scheduling) are not mirrored: each would be a status write.
	restarting := vm.Status.RestartingVMIUID != "" && vm.DeletionTimestamp == nil
	switch {
	case vm.DeletionTimestamp != nil:
		vm.Status.Phase = v1alpha1.VirtualMachineTerminating
	case backoff:
		vm.Status.Phase = v1alpha1.VirtualMachinePending
	case restarting:
		vm.Status.Phase = v1alpha1.VirtualMachineStarting
	default:
		vm.Status.Phase = policy.PhaseOf(kv)
	}
	if restarting {
		setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonRestarting,
			"Restarting: a new VMI with the current spec was requested from KubeVirt")
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionFalse, v1alpha1.ReasonNoRestartRequired,
			"Restarting: the new VMI is built from the current spec")
		return
	}
	vm.Status.PrintableStatus = ""
	if kv != nil {
		vm.Status.PrintableStatus = string(kv.Status.PrintableStatus)
	}

	switch {
	case kv != nil && kv.Status.Ready:
		setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonRunning, "The VMI is running and ready")
	case backoff:
		setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonRestartBackoff,
			fmt.Sprintf("The VM failed %d time(s) in a row; restarting at %s", vm.Status.FailureCount,
				vm.Status.RestartNotBefore.UTC().Format(time.RFC3339)))
	case policy.VMIActive(vmi) && vmi.Status.Phase == kvv1.Running:
		setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonGuestNotReady, "The VMI is running but not ready")
	default:
		msg := "No VMI is running"
		if kv != nil && kv.Status.PrintableStatus != "" {
			msg = fmt.Sprintf("KubeVirt reports %s", kv.Status.PrintableStatus)
		}
		setCondition(vm, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonNotRunning, msg)
	}

	switch {
	case !policy.VMIActive(vmi):
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionFalse, v1alpha1.ReasonNoRestartRequired,
			"No VMI is running; the next start uses the current spec")
	case kvRestartRequired(kv):
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionTrue, v1alpha1.ReasonKubeVirtRestartFlag,
			"KubeVirt reports that the running VMI needs a restart to apply the current spec")
	case vmi.Annotations[AnnotationTemplateHash] == "":
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionUnknown, v1alpha1.ReasonChangesPending,
			"The running VMI was not created by runpolicy; restart it to be sure it runs the current spec")
	case vmi.Annotations[AnnotationTemplateHash] != desiredHash:
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionTrue, v1alpha1.ReasonChangesPending,
			"The template changed since the running VMI was created; a restart (or a reboot inside the guest) applies it")
	default:
		setCondition(vm, v1alpha1.ConditionAwaitingRestart, metav1.ConditionFalse, v1alpha1.ReasonNoRestartRequired,
			"The running VMI matches the current spec")
	}
}

func kvRestartRequired(kv *kvv1.VirtualMachine) bool {
	if kv == nil {
		return false
	}
	for _, c := range kv.Status.Conditions {
		if c.Type == kvv1.VirtualMachineRestartRequired && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}
