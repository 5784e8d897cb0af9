// Package powerschedule reconciles VirtualMachinePowerSchedules: at each scheduled time, one
// VirtualMachineOperation (Start, Stop or Restart) per VM the schedule names, so that every scheduled action leaves
// an audit object and runs through the same rules as a user's operation.
package powerschedule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/internal/schedule"
)

// Labels on the operations a schedule creates (beside vm.LabelMadeBy).
const (
	// ReasonSchedule is the runpolicy.io/reason label's value on them.
	ReasonSchedule = "schedule"
	// LabelSchedule names the schedule that created the operation.
	LabelSchedule = "runpolicy.io/schedule"
	// AnnotationScheduledTime is the run's scheduled time (RFC 3339, UTC).
	AnnotationScheduledTime = "runpolicy.io/scheduled-time"
)

// Event reasons.
const (
	EventRun     = "ScheduledRun"
	EventSkipped = "ScheduledRunSkipped"
	EventInvalid = "InvalidSchedule"
)

// DefaultStartingDeadline is spec.startingDeadlineSeconds' default.
const DefaultStartingDeadline = 300 * time.Second

// Reconciler runs VirtualMachinePowerSchedules.
type Reconciler struct {
	client.Client
	// APIReader lists the VMs of a run uncached: the VM cache keeps no labels (cachetrim.go), and a run is rare.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
}

// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachinepowerschedules,verbs=get;list;watch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachinepowerschedules/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachines,verbs=get;list;watch
// +kubebuilder:rbac:groups=runpolicy.io,resources=virtualmachineoperations,verbs=create
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

func (r *Reconciler) now() time.Time {
	if r.Clock != nil {
		return r.Clock()
	}
	return time.Now()
}

// Reconcile makes the run that is due, if any, and says when the next one is.
//
// A run is made at most once: its operations' names are derived from the schedule's UID, the scheduled time and
// the VM, so a pass after a crash between creating them and writing the status finds them AlreadyExists; the
// status then records the scheduled time as dealt with.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ps := &v1alpha1.VirtualMachinePowerSchedule{}
	if err := r.Get(ctx, req.NamespacedName, ps); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if ps.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	now := r.now()
	orig := ps.DeepCopy()
	ps.Status.ObservedGeneration = ps.Generation

	sched, err := schedule.Parse(ps.Spec.Schedule, ps.Spec.TimeZone)
	if err != nil { // admission refuses most; a range such as 5-1 gets here
		ps.Status.NextScheduleTime = nil
		r.setReady(ps, metav1.ConditionFalse, v1alpha1.ScheduleReasonInvalidSchedule, err.Error())
		if !meta.IsStatusConditionFalse(orig.Status.Conditions, v1alpha1.ScheduleConditionReady) {
			r.Recorder.Eventf(ps, nil, corev1.EventTypeWarning, EventInvalid, "Schedule", "%v", err)
		}
		return ctrl.Result{}, r.writeStatus(ctx, orig, ps)
	}

	last := ps.CreationTimestamp.Time
	if ps.Status.LastScheduleTime != nil {
		last = ps.Status.LastScheduleTime.Time
	}
	if orig.Status.ObservedGeneration != 0 && orig.Status.ObservedGeneration != ps.Generation && now.After(last) {
		// A changed spec counts from the change: the runs it would have made before are not made late.
		last = now
		ps.Status.LastScheduleTime = &metav1.Time{Time: now}
	}
	deadline := DefaultStartingDeadline
	if ps.Spec.StartingDeadlineSeconds != nil {
		deadline = time.Duration(*ps.Spec.StartingDeadlineSeconds) * time.Second
	}
	due := sched.Due(last, now, deadline)
	switch {
	case due.Time.IsZero():
	case ps.Spec.Suspend || due.TooLate:
		why := fmt.Sprintf("missed by %s, more than spec.startingDeadlineSeconds (%s)", now.Sub(due.Time).Round(time.Second), deadline)
		if ps.Spec.Suspend {
			why = "spec.suspend is true"
		}
		r.skip(ps, due.Time, due.Missed+1, why)
	default:
		if due.Missed > 0 {
			r.skip(ps, due.Time, due.Missed, fmt.Sprintf("several runs were missed; only the newest, due at %s, is made",
				due.Time.UTC().Format(time.RFC3339)))
		}
		run, err := r.run(ctx, ps, due.Time, now)
		if err != nil {
			return ctrl.Result{}, err
		}
		ps.Status.LastRun = run
		ps.Status.LastScheduleTime = &metav1.Time{Time: due.Time}
	}

	ps.Status.NextScheduleTime = nil
	switch {
	case ps.Spec.Suspend:
		r.setReady(ps, metav1.ConditionFalse, v1alpha1.ScheduleReasonSuspended, "spec.suspend is true: no runs until it is false")
	case due.Next.IsZero():
		r.setReady(ps, metav1.ConditionFalse, v1alpha1.ScheduleReasonInvalidSchedule,
			fmt.Sprintf("spec.schedule %q never matches a date", ps.Spec.Schedule))
	default:
		ps.Status.NextScheduleTime = &metav1.Time{Time: due.Next}
		r.setReady(ps, metav1.ConditionTrue, v1alpha1.ScheduleReasonScheduled,
			fmt.Sprintf("next run at %s (%s)", due.Next.UTC().Format(time.RFC3339), due.Next.Format("2006-01-02 15:04 MST")))
	}
	if err := r.writeStatus(ctx, orig, ps); err != nil {
		return ctrl.Result{}, err
	}
	if due.Next.IsZero() || ps.Spec.Suspend {
		return ctrl.Result{}, nil
	}
	// Wake at the next run (a little after: the schedule's time has then passed on every clock).
	return ctrl.Result{RequeueAfter: due.Next.Sub(now) + 100*time.Millisecond}, nil
}

// skip records scheduled times that are not made, the newest at t.
func (r *Reconciler) skip(ps *v1alpha1.VirtualMachinePowerSchedule, t time.Time, n int64, why string) {
	ps.Status.SkippedRuns += n
	ps.Status.LastSkippedTime = &metav1.Time{Time: t}
	ps.Status.LastScheduleTime = &metav1.Time{Time: t}
	r.Recorder.Eventf(ps, nil, corev1.EventTypeWarning, EventSkipped, "Skip",
		"Skipped %d run(s), the newest due at %s: %s", n, t.UTC().Format(time.RFC3339), why)
}

// run creates the operations of the run due at t, one per VM the schedule names.
func (r *Reconciler) run(ctx context.Context, ps *v1alpha1.VirtualMachinePowerSchedule, t, now time.Time) (*v1alpha1.PowerScheduleRun, error) {
	vms, missing, err := r.targets(ctx, ps)
	if err != nil {
		return nil, err
	}
	run := &v1alpha1.PowerScheduleRun{ScheduledTime: &metav1.Time{Time: t}, VMs: int32(len(vms)), //nolint:gosec // at most a namespace's VMs
		MissingVirtualMachines: missing[:min(len(missing), 64)]}
	if late := now.Sub(t); late >= time.Second {
		run.LateSeconds = int64(late / time.Second)
	}
	created := 0
	for _, target := range vms {
		op := operation(ps, &target, t)
		err := r.Create(ctx, op)
		switch {
		case apierrors.IsAlreadyExists(err): // made by a pass before a crash
		case err != nil:
			return nil, fmt.Errorf("creating VirtualMachineOperation %s for the run due at %s: %w", op.Name, t.UTC().Format(time.RFC3339), err)
		default:
			created++
		}
		if len(run.Operations) < 64 {
			run.Operations = append(run.Operations, op.Name)
		}
	}
	ctrl.LoggerFrom(ctx).Info("Scheduled run", "scheduledTime", t, "action", ps.Spec.Action, "vms", len(vms), "created", created)
	if created == 0 && len(vms) > 0 {
		return run, nil // made and told by a pass whose status write did not land
	}
	msg := fmt.Sprintf("%s of %d VM(s) for the run due at %s", ps.Spec.Action, len(vms), t.UTC().Format(time.RFC3339))
	if len(missing) > 0 {
		msg += fmt.Sprintf("; no VM named %s", strings.Join(missing, ", "))
	}
	r.Recorder.Eventf(ps, nil, corev1.EventTypeNormal, EventRun, string(ps.Spec.Action), "%s", msg)
	return run, nil
}

// targets are the VMs the schedule names, by name order, and the names of spec.virtualMachineNames without one.
func (r *Reconciler) targets(ctx context.Context, ps *v1alpha1.VirtualMachinePowerSchedule) ([]v1alpha1.VirtualMachine, []string, error) {
	var list v1alpha1.VirtualMachineList
	opts := []client.ListOption{client.InNamespace(ps.Namespace)}
	if ps.Spec.VMSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(ps.Spec.VMSelector)
		if err != nil {
			return nil, nil, fmt.Errorf("spec.vmSelector: %w", err)
		}
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	if err := r.APIReader.List(ctx, &list, opts...); err != nil {
		return nil, nil, err
	}
	vms := list.Items
	var missing []string
	if ps.Spec.VMSelector == nil {
		vms = slices.DeleteFunc(vms, func(v v1alpha1.VirtualMachine) bool {
			return !slices.Contains(ps.Spec.VirtualMachineNames, v.Name)
		})
		for _, name := range ps.Spec.VirtualMachineNames {
			if !slices.ContainsFunc(vms, func(v v1alpha1.VirtualMachine) bool { return v.Name == name }) {
				missing = append(missing, name)
			}
		}
	}
	vms = slices.DeleteFunc(vms, func(v v1alpha1.VirtualMachine) bool { return v.DeletionTimestamp != nil })
	slices.SortFunc(vms, func(a, b v1alpha1.VirtualMachine) int { return strings.Compare(a.Name, b.Name) })
	return vms, missing, nil
}

// operation is the run's operation for target. Its name is the VM's, the action and a hash of the schedule's UID
// and the scheduled time: one per VM and run, whoever creates it how often. It belongs to the VM, like a user's
// operation, so that it outlives the schedule as the record of what was done.
func operation(ps *v1alpha1.VirtualMachinePowerSchedule, target *v1alpha1.VirtualMachine, t time.Time) *v1alpha1.VirtualMachineOperation {
	sum := sha256.Sum256([]byte(string(ps.UID) + "/" + t.UTC().Format(time.RFC3339)))
	force := ps.Spec.Force && (ps.Spec.Action == v1alpha1.OperationStop || ps.Spec.Action == v1alpha1.OperationRestart)
	return &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-%s-%s", target.Name, strings.ToLower(string(ps.Spec.Action)), hex.EncodeToString(sum[:])[:10]),
			Namespace: ps.Namespace,
			Labels: map[string]string{vm.LabelReason: ReasonSchedule, vm.LabelMadeBy: vm.MadeByRunpolicy,
				LabelSchedule: ps.Name},
			Annotations:     map[string]string{AnnotationScheduledTime: t.UTC().Format(time.RFC3339)},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(target, v1alpha1.GroupVersion.WithKind("VirtualMachine"))},
		},
		Spec: v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: target.Name, Type: ps.Spec.Action, Force: force},
	}
}

func (r *Reconciler) setReady(ps *v1alpha1.VirtualMachinePowerSchedule, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&ps.Status.Conditions, metav1.Condition{Type: v1alpha1.ScheduleConditionReady, Status: status,
		Reason: reason, Message: msg, ObservedGeneration: ps.Generation})
}

// writeStatus writes the status when it changed. A conflict returns an error: the pass runs again on the newer
// object, and a run it made is found AlreadyExists.
func (r *Reconciler) writeStatus(ctx context.Context, orig, ps *v1alpha1.VirtualMachinePowerSchedule) error {
	if equality.Semantic.DeepEqual(orig.Status, ps.Status) {
		return nil
	}
	return r.Status().Update(ctx, ps)
}

// SetupWithManager registers the reconciler.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.VirtualMachinePowerSchedule{}).
		Named("virtualmachinepowerschedule").
		Complete(r)
}
