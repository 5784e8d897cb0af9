package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/kubevirt"
	"github.com/runpolicy/runpolicy/internal/metrics"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// Power event reasons.
const (
	EventGuestReset    = "GuestReset"
	EventGuestShutdown = "GuestShutdown"
	EventHostReset     = "HostReset"
	EventCrashed       = "Crashed"
	EventStopped       = "Stopped"
	EventRestarting    = "Restarting"
	EventRestartFailed = "RestartFailed"
)

// Labels KubeVirt puts on virt-launcher pods.
const (
	LabelLauncher  = "kubevirt.io"
	LauncherValue  = "virt-launcher"
	LabelCreatedBy = "kubevirt.io/created-by"
)

// IndexLauncherVMIUID is the cache index of launcher pods by their kubevirt.io/created-by label (the VMI's UID).
const IndexLauncherVMIUID = "launcher.vmiUID"

// podSettleTimeout bounds how long the decision waits for the launcher pod to publish its termination
// message once the VMI has ended; after that the VMI is judged without it (unknown, never a reboot).
const podSettleTimeout = 30 * time.Second

// powerPass is what one reconcile decided about an ended VMI.
type powerPass struct {
	// requeue asks for another pass after the given delay (backoff, or a pod still terminating).
	requeue time.Duration
	// act runs after the status that records the decision was written: the restart or the cleanup.
	act func(ctx context.Context) error
}

// reconcilePower applies the policy to an ended VMI (docs/behaviour.md). It updates vm.Status in
// memory; side effects that must only happen once the decision is recorded are returned in act.
//
// Idempotency: a restart of VMI X is recorded in status.restartingVMIUID before KubeVirt is asked to start,
// and turned into handledVMIUID=X (restartCount+1) once X is gone. A crash anywhere in between leads to the
// same KubeVirt request again — a pending Start request is replaced by itself — or to the bookkeeping
// alone, so one reset never causes two new VMIs.
func (r *Reconciler) reconcilePower(ctx context.Context, vm *v1alpha1.VirtualMachine, kv *kvv1.VirtualMachine,
	vmi *kvv1.VirtualMachineInstance) (powerPass, error) {
	log := ctrl.LoggerFrom(ctx)
	now := r.now()
	st := &vm.Status

	// Finish a restart once KubeVirt runs its successor. Until then status keeps reading Starting, so the steps
	// KubeVirt goes through in between (old VMI deleted, new one scheduled) cost no status write: a restart is
	// three writes in all — the intent, KubeVirt's start request, and this bookkeeping.
	if st.RestartingVMIUID != "" && restartDone(st.RestartingVMIUID, kv, vmi) {
		st.HandledVMIUID, st.RestartingVMIUID = st.RestartingVMIUID, ""
		st.RestartCount++
		st.RestartNotBefore = nil
	}
	// A KubeVirt VM of the same name that is not ours (a name conflict) is never acted on: no restart, no cleanup.
	if kv == nil || !metav1.IsControlledBy(kv, vm) || vmi == nil || !vmi.IsFinal() {
		return powerPass{}, nil
	}
	uid := string(vmi.UID)

	// A restart recorded but not yet taken by KubeVirt (or a crash right after recording it): ask again,
	// unless KubeVirt already holds the Start request (it refuses a second one while one is pending) or already
	// replaced the VMI; the VM's status change when KubeVirt acts brings the next pass.
	if st.RestartingVMIUID == uid {
		// Read past the cache: right after our own request, or after KubeVirt acted, the cache may lag.
		next, err := r.restartNotTaken(ctx, kv, uid)
		switch {
		case err != nil || next == restartWait:
			return powerPass{}, err
		case next == restartServeStale:
			// A Start request left from the previous restart, which KubeVirt trims only once a VMI runs, outlived
			// the VMI it started (that one ended first): KubeVirt never serves it while the ended VMI is there, and
			// virt-api refuses another start ("already underway"). Without the ended VMI, KubeVirt serves it.
			ctrl.LoggerFrom(ctx).Info("KubeVirt holds a stale Start request: deleting the ended VMI so that it is served",
				"VirtualMachineInstance", klog.KObj(vmi))
			return powerPass{act: r.cleanupAct(vmi)}, nil
		}
		return powerPass{act: r.restartAct(vm, uid, corev1.EventTypeNormal, EventRestarting,
			fmt.Sprintf("Starting a new VMI with the current spec (the previous one, %s, ended)", uid))}, nil
	}
	if st.HandledVMIUID == uid {
		// Already decided. What is left of a VMI that stays stopped is cleaned up (again, if a crash
		// interrupted it) so that the VM reads Stopped and a later Start begins afresh.
		if stopsByPolicy(vm.Spec.RunPolicy) && vmi.DeletionTimestamp == nil {
			return powerPass{act: r.cleanupAct(vmi)}, nil
		}
		return powerPass{}, nil
	}

	ended, settled, err := r.ended(ctx, kv, vmi, now)
	if err != nil {
		return powerPass{}, err
	}
	if !settled {
		log.V(1).Info("Waiting for the launcher pod to publish its termination message", "VirtualMachineInstance", klog.KObj(vmi))
		return powerPass{requeue: time.Second}, nil
	}
	d := policy.Decide(actingPolicy(vm.Spec.RunPolicy, kv), ended)
	if ended.StoppedByUser && startPending(kv) {
		d.Message = "The VMI was stopped through KubeVirt for a restart; KubeVirt starts the new one"
	}

	// Record how the VMI ended, once. A restart made in this pass reports it in one event, after KubeVirt
	// took the request; anything else is reported now.
	restartNow := d.Action == policy.ActionRestart
	if d.Action == policy.ActionRestartAfterBackoff {
		if st.RestartNotBefore == nil {
			st.FailureCount++
			st.RestartNotBefore = &metav1.Time{Time: now.Add(r.Backoff.Delay(st.FailureCount))}
		}
		restartNow = !st.RestartNotBefore.After(now)
	}
	if st.LastShutdown == nil || st.LastShutdown.VMIUID != uid {
		st.LastShutdown = &v1alpha1.LastShutdown{Source: d.Source, Reason: reasonText(ended), Time: &metav1.Time{Time: now}, VMIUID: uid}
		if !restartNow {
			msg := d.Message
			if d.Action == policy.ActionRestartAfterBackoff {
				msg = fmt.Sprintf("%s at %s", msg, st.RestartNotBefore.UTC().Format(time.RFC3339))
			}
			r.Recorder.Eventf(vm, vmi, eventType(d.Source), eventReason(d.Source), "Shutdown", "%s", msg)
		}
		log.Info("VMI ended", "VirtualMachineInstance", klog.KObj(vmi),
			"source", d.Source, "action", d.Action)
	}

	switch d.Action {
	case policy.ActionRestartAfterBackoff:
		if !restartNow {
			return powerPass{requeue: st.RestartNotBefore.Sub(now)}, nil
		}
		st.RestartingVMIUID = uid
		return powerPass{act: r.restartAct(vm, uid, eventType(d.Source), eventReason(d.Source), d.Message)}, nil
	case policy.ActionRestart:
		st.FailureCount = 0
		st.RestartNotBefore = nil
		st.RestartingVMIUID = uid
		return powerPass{act: r.restartAct(vm, uid, eventType(d.Source), eventReason(d.Source), d.Message)}, nil
	case policy.ActionStayStopped:
		if d.Source == v1alpha1.ShutdownGuestShutdown || d.Source == v1alpha1.ShutdownUser {
			st.FailureCount = 0
		}
		st.RestartNotBefore = nil
		st.HandledVMIUID = uid
		if vmi.DeletionTimestamp == nil {
			return powerPass{act: r.cleanupAct(vmi)}, nil
		}
		return powerPass{}, nil
	default: // KubeVirt acts (Always, Halted): only report.
		st.HandledVMIUID = uid
		return powerPass{}, nil
	}
}

// actingPolicy is the policy whose table applies now: while the KubeVirt VM is not on runStrategy Manual
// (AlwaysOnUntilStoppedManually starting up on Always, or a policy change not yet applied), KubeVirt's own
// strategy acts and runpolicy must not restart on top of it.
func actingPolicy(p v1alpha1.RunPolicy, kv *kvv1.VirtualMachine) v1alpha1.RunPolicy {
	if kv.Spec.RunStrategy == nil {
		return p
	}
	switch *kv.Spec.RunStrategy {
	case kvv1.RunStrategyAlways, kvv1.RunStrategyRerunOnFailure:
		return v1alpha1.RunPolicyAlwaysOn
	case kvv1.RunStrategyHalted:
		return v1alpha1.RunPolicyAlwaysOff
	}
	return p
}

// stoppedByUser tells whether the VMI was stopped through KubeVirt: a Stop request for its UID, or a deletion.
// Under runStrategy Always (and RerunOnFailure) KubeVirt itself deletes an ended VMI within milliseconds to
// replace it, so there a deletion says nothing about who stopped it and the termination message decides. Under
// Manual and Halted, KubeVirt never deletes an ended VMI by itself.
func stoppedByUser(kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	return stopRequested(kv, vmi.UID) || vmi.DeletionTimestamp != nil && !kubeVirtReplaces(kv)
}

// rebootsStayInGuest tells whether a guest reboot could not have ended the VMI: without any hook sidecar and
// without rebootPolicy Terminate, KubeVirt runs QEMU with on_reboot=restart.
func rebootsStayInGuest(vmi *kvv1.VirtualMachineInstance) bool {
	rp := vmi.Spec.Domain.RebootPolicy
	return vmi.Annotations[AnnotationHookSidecars] == "" && (rp == nil || *rp != kvv1.RebootPolicyTerminate)
}

// kubeVirtReplaces tells whether KubeVirt's runStrategy deletes and recreates an ended VMI by itself.
func kubeVirtReplaces(kv *kvv1.VirtualMachine) bool {
	if kv.Spec.RunStrategy == nil {
		return kv.Spec.Running != nil && *kv.Spec.Running
	}
	return *kv.Spec.RunStrategy == kvv1.RunStrategyAlways || *kv.Spec.RunStrategy == kvv1.RunStrategyRerunOnFailure
}

// startPending tells whether KubeVirt holds a Start request it has not acted on yet.
func startPending(kv *kvv1.VirtualMachine) bool {
	for _, req := range kv.Status.StateChangeRequests {
		if req.Action == kvv1.StartRequest {
			return true
		}
	}
	return false
}

func stopsByPolicy(p v1alpha1.RunPolicy) bool {
	return p == v1alpha1.RunPolicyManual || p == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
}

// restartAct has KubeVirt start a new VMI, built from the VM's current template, in place of the ended one: by
// default with KubeVirt's Start request written directly and the ended VMI deleted (kubevirt.Client.Replace), or
// through KubeVirt's start subresource (RestartRequest). The event reports the restart once KubeVirt accepted it.
func (r *Reconciler) restartAct(vm *v1alpha1.VirtualMachine, uid, evType, evReason, msg string) func(context.Context) error {
	return func(ctx context.Context) error {
		ctrl.LoggerFrom(ctx).Info("Restarting VMI", "endedVMI", uid)
		var err error
		if r.RestartRequest == RestartViaStartSubresource {
			err = r.Lifecycle.Start(ctx, vm.Namespace, vm.Name)
		} else {
			err = r.Lifecycle.Replace(ctx, vm.Namespace, vm.Name, types.UID(uid))
		}
		if errors.Is(err, kubevirt.ErrRequestPending) {
			// Someone else's request came first; the next pass judges it (restartNotTaken).
			return err
		}
		if err != nil {
			r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, EventRestartFailed, "Start", "Restart failed: %v", err)
			return err
		}
		r.Recorder.Eventf(vm, nil, evType, evReason, "Start", "%s", msg)
		reason := v1alpha1.ShutdownUnknown
		if ls := vm.Status.LastShutdown; ls != nil && ls.VMIUID == uid {
			reason = ls.Source
		}
		metrics.RestartRequested(string(vm.Spec.RunPolicy), string(reason))
		return nil
	}
}

// restartNext is what a restart that was recorded but not seen through needs from runpolicy.
type restartNext int

const (
	// restartWait: KubeVirt took the request (or the VMI moved on); its next status change brings the next pass.
	restartWait restartNext = iota
	// restartSend: KubeVirt holds no Start request: send the start (again).
	restartSend
	// restartServeStale: KubeVirt holds only a Start request older than the ended VMI (no Stop for it), which it
	// will never serve while that VMI exists.
	restartServeStale
)

// restartNotTaken reads KubeVirt's VM and VMI past the cache and tells what the restart of VMI uid still needs.
func (r *Reconciler) restartNotTaken(ctx context.Context, kv *kvv1.VirtualMachine, uid string) (restartNext, error) {
	key := client.ObjectKeyFromObject(kv)
	vmi := &kvv1.VirtualMachineInstance{}
	if err := r.reader().Get(ctx, key, vmi); err != nil {
		return restartWait, client.IgnoreNotFound(err)
	}
	if string(vmi.UID) != uid || vmi.DeletionTimestamp != nil || !vmi.IsFinal() {
		return restartWait, nil
	}
	fresh := &kvv1.VirtualMachine{}
	if err := r.reader().Get(ctx, key, fresh); err != nil {
		return restartWait, client.IgnoreNotFound(err)
	}
	return pendingRestart(fresh, vmi.UID), nil
}

// pendingRestart judges KubeVirt's stateChangeRequests for the restart of the ended VMI uid, which still exists.
// virt-api's start writes [Stop{uid}, Start] in one patch and virt-controller trims the Stop only once that VMI is
// gone, so a Start without the Stop is one from before it.
func pendingRestart(kv *kvv1.VirtualMachine, uid types.UID) restartNext {
	switch {
	case !startPending(kv):
		return restartSend
	case stopRequested(kv, uid):
		return restartWait
	case kv.Spec.RunStrategy != nil && *kv.Spec.RunStrategy == kvv1.RunStrategyManual:
		return restartServeStale
	}
	return restartWait
}

// stopRequested tells whether KubeVirt holds a Stop request for the VMI uid.
func stopRequested(kv *kvv1.VirtualMachine, uid types.UID) bool {
	for _, req := range kv.Status.StateChangeRequests {
		if req.Action == kvv1.StopRequest && req.UID != nil && *req.UID == uid {
			return true
		}
	}
	return false
}

// restartDone tells whether the restart of VMI uid is over: KubeVirt no longer holds the Start request for it and
// either runs a new VMI (no longer reported as starting), or the new VMI ended already, or there is none to wait
// for. A KubeVirt VM taken off runStrategy Manual meanwhile (a policy change) ends it too: KubeVirt's own strategy
// decides from then on, and a Start request it holds may never be served (Halted ignores it).
func restartDone(uid string, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	switch {
	case kv == nil || kv.Spec.RunStrategy == nil || *kv.Spec.RunStrategy != kvv1.RunStrategyManual:
		return true
	case vmi != nil && string(vmi.UID) == uid && vmi.DeletionTimestamp == nil:
		return false // the ended VMI is still there: KubeVirt has not acted yet
	case vmi == nil || string(vmi.UID) == uid:
		// Gone or going: KubeVirt creates the new VMI next, while it holds the Start request.
		return !startPending(kv)
	case !vmiActive(vmi):
		return true // the new VMI ended already: its own decision follows in this pass
	}
	p := phaseFor(kv)
	return p != v1alpha1.VirtualMachineStarting && p != v1alpha1.VirtualMachineStopped
}

// cleanupAct deletes a finished VMI, and only that one (UID precondition).
func (r *Reconciler) cleanupAct(vmi *kvv1.VirtualMachineInstance) func(context.Context) error {
	return func(ctx context.Context) error {
		ctrl.LoggerFrom(ctx).Info("Deleting finished VMI", "VirtualMachineInstance", klog.KObj(vmi))
		err := r.Delete(ctx, vmi, client.Preconditions{UID: ptr.To(vmi.UID)})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
}

// ended gathers what is known about how vmi ended. settled is false while the launcher pod is still
// terminating and may yet publish the hook sidecar's message.
func (r *Reconciler) ended(ctx context.Context, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance, now time.Time) (policy.Ended, bool, error) {
	e := policy.Ended{Failed: vmi.Status.Phase == kvv1.Failed, Cause: shutdown.CauseUnknown,
		StoppedByUser: stoppedByUser(kv, vmi), RebootsStayInGuest: rebootsStayInGuest(vmi)}
	pods := &corev1.PodList{}
	// Read only, so the cache's copies are used as they are.
	if err := r.List(ctx, pods, client.InNamespace(vmi.Namespace), client.MatchingFields{IndexLauncherVMIUID: string(vmi.UID)},
		client.UnsafeDisableDeepCopy); err != nil {
		return e, false, err
	}
	// Only what KubeVirt wrote counts: the launcher pods virt-controller recorded for this VMI (anyone allowed to
	// create pods can make one with the same labels), and in them only runpolicy's own sidecar container (a user's
	// sidecars, compute, or a user's entry reusing runpolicy's image write what they like).
	// virt-controller records every pod the VMI controls, so a pod made with a controller reference to the VMI gets
	// in too: when the recorded pods disagree, the cause is unknown, never guessed.
	ours := ourSidecarContainer(vmi.Annotations[AnnotationHookSidecars], r.HookSidecarImage)
	var causes []shutdown.Cause
	terminating := false
	for i := range pods.Items {
		p := &pods.Items[i]
		if _, ok := vmi.Status.ActivePods[p.UID]; !ok {
			continue
		}
		m, done := terminationMessages(p, ours)
		if c := shutdown.Parse(strings.Join(m, "\n")).Cause; c != shutdown.CauseUnknown {
			causes = append(causes, c)
		}
		if !done {
			terminating = true
		}
	}
	e.Cause = agreed(causes)
	if e.Cause == shutdown.CauseUnknown && terminating && now.Sub(finishedAt(vmi, now)) < podSettleTimeout {
		return e, false, nil
	}
	return e, true, nil
}

// agreed is the cause all launcher pods agree on; unknown when there is none or they disagree.
func agreed(causes []shutdown.Cause) shutdown.Cause {
	if len(causes) == 0 {
		return shutdown.CauseUnknown
	}
	for _, c := range causes[1:] {
		if c != causes[0] {
			return shutdown.CauseUnknown
		}
	}
	return causes[0]
}

// terminationMessages returns the termination message of the pod's container named container (current state,
// else the last terminated state; none when container is "") and whether every container has terminated.
func terminationMessages(p *corev1.Pod, container string) ([]string, bool) {
	var msgs []string
	done := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	allTerminated := len(p.Status.ContainerStatuses) > 0
	for _, cs := range p.Status.ContainerStatuses {
		var term *corev1.ContainerStateTerminated
		switch {
		case cs.State.Terminated != nil:
			term = cs.State.Terminated
		case cs.LastTerminationState.Terminated != nil:
			term = cs.LastTerminationState.Terminated
			allTerminated = false
		default:
			allTerminated = false
		}
		if term != nil && container != "" && cs.Name == container {
			msgs = append(msgs, term.Message)
		}
	}
	return msgs, done || allTerminated
}

// finishedAt is when the VMI reached its final phase, as KubeVirt recorded it.
func finishedAt(vmi *kvv1.VirtualMachineInstance, now time.Time) time.Time {
	for _, t := range vmi.Status.PhaseTransitionTimestamps {
		if t.Phase == vmi.Status.Phase {
			return t.PhaseTransitionTimestamp.Time
		}
	}
	return now
}

func reasonText(e policy.Ended) string {
	switch {
	case e.StoppedByUser:
		return "The VMI was stopped through KubeVirt"
	case e.Cause == shutdown.CauseUnknown && !e.Failed && e.RebootsStayInGuest:
		return "The VMI ended cleanly and ran without a hook sidecar, so guest reboots stayed inside the guest: a guest poweroff"
	case e.Cause == shutdown.CauseUnknown && e.Failed:
		return "The VMI failed and no shutdown reason was recorded (crash, lost launcher pod or missing hook sidecar)"
	case e.Cause == shutdown.CauseUnknown:
		return "No shutdown reason was recorded (launcher pod gone or hook sidecar missing)"
	default:
		return fmt.Sprintf("QEMU reported %s", e.Cause)
	}
}

func eventReason(s v1alpha1.ShutdownSource) string {
	switch s {
	case v1alpha1.ShutdownGuestReset:
		return EventGuestReset
	case v1alpha1.ShutdownGuestShutdown:
		return EventGuestShutdown
	case v1alpha1.ShutdownHostReset:
		return EventHostReset
	case v1alpha1.ShutdownUser:
		return EventStopped
	default:
		return EventCrashed
	}
}

func eventType(s v1alpha1.ShutdownSource) string {
	if s == v1alpha1.ShutdownCrash || s == v1alpha1.ShutdownUnknown {
		return corev1.EventTypeWarning
	}
	return corev1.EventTypeNormal
}
