package vmop

import (
	"context"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// collect applies the cleanup rules to a finished operation: finished operations are kept for audit, then
// removed TTL after they finished or when more than MaxPerVM finished operations of the same VM are newer.
// Each pass deletes only the operation it reconciles (with a UID precondition), never a sibling.
func (r *Reconciler) collect(ctx context.Context, op *v1alpha1.VirtualMachineOperation) (ctrl.Result, error) {
	if r.ttl() <= 0 && r.maxPerVM() <= 0 {
		return ctrl.Result{}, nil
	}
	list := &v1alpha1.VirtualMachineOperationList{}
	if err := r.List(ctx, list, client.InNamespace(op.Namespace), client.MatchingFields{IndexVMName: op.Spec.VirtualMachineName}); err != nil {
		return ctrl.Result{}, err
	}
	var finished []Finish
	for i := range list.Items {
		if o := &list.Items[i]; Finished(o) && o.DeletionTimestamp == nil {
			finished = append(finished, finishOf(o))
		}
	}
	if !slices.ContainsFunc(finished, func(f Finish) bool { return f.Name == op.Name }) {
		finished = append(finished, finishOf(op)) // the cache may not show this pass's own write yet
	}
	now := r.now().Time
	remove := Collect(finished, now, r.ttl(), r.maxPerVM())
	if slices.Contains(remove, op.Name) {
		ctrl.LoggerFrom(ctx).Info("Deleting finished VirtualMachineOperation",
			"phase", op.Status.Phase, "ttl", r.ttl(), "maxPerVM", r.maxPerVM())
		err := r.Delete(ctx, op, client.Preconditions{UID: &op.UID})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if r.ttl() > 0 {
		return ctrl.Result{RequeueAfter: finishOf(op).At.Add(r.ttl()).Sub(now) + time.Second}, nil
	}
	return ctrl.Result{}, nil
}

func finishOf(o *v1alpha1.VirtualMachineOperation) Finish {
	at := o.CreationTimestamp.Time
	if o.Status.CompletionTime != nil {
		at = o.Status.CompletionTime.Time
	}
	return Finish{Name: o.Name, At: at}
}

// orDefault is v, or def when v is zero; a negative v means none (0).
func orDefault[T time.Duration | int](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

func (r *Reconciler) ttl() time.Duration     { return orDefault(r.TTL, DefaultTTL) }
func (r *Reconciler) maxPerVM() int          { return orDefault(r.MaxPerVM, DefaultMaxPerVM) }
func (r *Reconciler) timeout() time.Duration { return orDefault(r.Timeout, DefaultTimeout) }
