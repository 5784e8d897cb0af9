package vmop

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// setCondition sets a condition with the operation's generation.
func setCondition(op *v1alpha1.VirtualMachineOperation, t string, s metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&op.Status.Conditions, metav1.Condition{
		Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: op.Generation,
	})
}

// pending keeps the operation Pending with Completed=False and the reason it waits.
func pending(op *v1alpha1.VirtualMachineOperation, reason, msg string) {
	op.Status.Phase = v1alpha1.OperationPending
	setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionFalse, reason, msg)
}

// fail ends the operation: phase Failed, Completed=False with the reason.
func fail(op *v1alpha1.VirtualMachineOperation, now metav1.Time, reason, msg string) {
	op.Status.Phase = v1alpha1.OperationFailed
	setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionFalse, reason, msg)
	if op.Status.CompletionTime == nil {
		op.Status.CompletionTime = &now
	}
}

// complete ends the operation: phase Completed, Completed=True.
func complete(op *v1alpha1.VirtualMachineOperation, now metav1.Time, msg string) {
	op.Status.Phase = v1alpha1.OperationCompleted
	setCondition(op, v1alpha1.OperationConditionCompleted, metav1.ConditionTrue, v1alpha1.OperationReasonCompleted, msg)
	if op.Status.CompletionTime == nil {
		op.Status.CompletionTime = &now
	}
}

// signalPrepared tells whether the target VMI was recorded for a signal (SignalSent present, not True).
func signalPrepared(op *v1alpha1.VirtualMachineOperation) bool {
	c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionSignalSent)
	return c != nil && c.Status != metav1.ConditionTrue
}

// unprepare forgets a recorded target (the operation has to wait again).
func unprepare(op *v1alpha1.VirtualMachineOperation) {
	meta.RemoveStatusCondition(&op.Status.Conditions, v1alpha1.OperationConditionSignalSent)
	op.Status.TargetVMIUID = ""
}
