package vm

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// Labels on the VirtualMachineOperations runpolicy creates itself.
const (
	// LabelReason says why runpolicy created the operation; ReasonApplyChanges: to apply a changed spec
	// (spec.disruptions.restartApprovalMode Automatic).
	LabelReason        = "runpolicy.io/reason"
	ReasonApplyChanges = "apply-changes"
	// LabelMadeBy names the component that created it.
	LabelMadeBy     = "app.kubernetes.io/created-by"
	MadeByRunpolicy = "runpolicy-controller"
)

// EventAutomaticRestart: runpolicy created a VirtualMachineOperation to restart the VM with its changed spec.
const EventAutomaticRestart = "AutomaticRestart"

// automaticRestart applies spec.disruptions to the status about to be written: when the next automatic restart
// happens, and the operation to create now (nil for none) once the status is written.
func automaticRestart(vm *v1alpha1.VirtualMachine, vmi *kvv1.VirtualMachineInstance, now time.Time) (*v1alpha1.VirtualMachineOperation, time.Duration) {
	c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionAwaitingRestart)
	awaiting := c != nil && c.Status == metav1.ConditionTrue && policy.VMIActive(vmi) && vm.Status.Phase == v1alpha1.VirtualMachineRunning
	plan := policy.PlanAutomaticRestart(vm.Spec.Disruptions, vm.Spec.RunPolicy, awaiting, now)
	vm.Status.NextAutomaticRestart = nil
	switch {
	case plan.Now:
		op := automaticRestartOperation(vm, vmi)
		vm.Status.AutomaticRestartOperation = op.Name
		c.Message += fmt.Sprintf("; restarting it automatically (VirtualMachineOperation %s)", op.Name)
		return op, 0
	case !plan.Next.IsZero():
		vm.Status.NextAutomaticRestart = &metav1.Time{Time: plan.Next}
		c.Message += fmt.Sprintf("; an automatic restart applies it when spec.disruptions.window opens at %s", plan.Next.UTC().Format(time.RFC3339))
		return nil, plan.Next.Sub(now)
	}
	return nil, 0
}

// automaticRestartOperation is the Restart operation for the running VMI. Its name is derived from the VMI's UID,
// so that however often the decision is made (a crash, a conflict, a resync) one VMI gets one operation: a second
// create is refused as AlreadyExists.
func automaticRestartOperation(vm *v1alpha1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) *v1alpha1.VirtualMachineOperation {
	uid := string(vmi.UID)
	return &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-apply-%s", vm.Name, uid[:min(8, len(uid))]),
			Namespace: vm.Namespace,
			Labels:    map[string]string{LabelReason: ReasonApplyChanges, LabelMadeBy: MadeByRunpolicy},
			Annotations: map[string]string{
				"runpolicy.io/target-vmi-uid": uid,
				"runpolicy.io/template-hash":  templateHashOf(vm),
			},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vm, v1alpha1.GroupVersion.WithKind("VirtualMachine"))},
		},
		Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: vm.Name, Type: v1alpha1.OperationRestart},
	}
}

// createAutomaticRestart creates the operation once the status that names it is written.
func (r *Reconciler) createAutomaticRestart(ctx context.Context, vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) error {
	err := r.Create(ctx, op)
	if apierrors.IsAlreadyExists(err) {
		return nil // made in an earlier pass: the operation controller carries it out
	}
	if err != nil {
		return fmt.Errorf("creating VirtualMachineOperation %s to apply the changed spec: %w", op.Name, err)
	}
	ctrl.LoggerFrom(ctx).Info("Created a Restart operation to apply the changed spec", "VirtualMachineOperation", op.Name)
	r.Recorder.Eventf(vm, op, corev1.EventTypeNormal, EventAutomaticRestart, "Restart",
		"Restarting to apply the changed spec (spec.disruptions.restartApprovalMode Automatic): VirtualMachineOperation %s", op.Name)
	return nil
}
