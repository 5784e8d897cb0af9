package policy

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// The power step: what runpolicy does about a runpolicy VM's VMI once it ended, as one pure function. The VM
// reconciler gathers a PowerInput, writes the bookkeeping PowerStep returns into the VM's status, and only then
// carries out the step's action (docs/restart-protocol.md). Every transition is a row of TestStep.

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

// PodSettleTimeout bounds how long the step waits for the launcher pod to publish its termination message once the
// VMI has ended; after that the VMI is judged without it (unknown, never a reboot).
const PodSettleTimeout = 30 * time.Second

// PowerInput is everything the power step decides from.
type PowerInput struct {
	// Policy is the runpolicy VM's spec.runPolicy.
	Policy v1alpha1.RunPolicy
	// KubeVirt is the KubeVirt VM (nil: none); Managed tells whether the runpolicy VM controls it (a KubeVirt VM of
	// the same name that is not ours is never acted on).
	KubeVirt *kvv1.VirtualMachine
	Managed  bool
	// VMI is the KubeVirt VMI (nil: none).
	VMI *kvv1.VirtualMachineInstance
	// Cause is what the launcher pods' hook sidecar recorded for an ended VMI (CauseUnknown without a message);
	// PodTerminating tells whether one of them is still terminating and may yet publish it.
	Cause          shutdown.Cause
	PodTerminating bool
	// RebootsStayInGuest: the VMI ran without any hook sidecar and without rebootPolicy Terminate (see Ended).
	RebootsStayInGuest bool
	// Status is the runpolicy VM's restart bookkeeping as it stands.
	Status Bookkeeping
	// Now is the time of the pass; Backoff spaces out restarts after consecutive failures.
	Now     time.Time
	Backoff Backoff
}

// Bookkeeping is the part of a runpolicy VM's status that the power step owns (docs/api.md).
type Bookkeeping struct {
	// LastShutdown is always a copy of ShutdownHistory's first entry (once there is one).
	LastShutdown     *v1alpha1.Shutdown
	ShutdownHistory  []v1alpha1.Shutdown
	RestartCount     int32
	HandledVMIUID    string
	RestartingVMIUID string
	FailureCount     int32
	RestartNotBefore *metav1.Time
}

// BookkeepingOf returns the power step's part of st (a copy).
func BookkeepingOf(st *v1alpha1.VirtualMachineStatus) Bookkeeping {
	var history []v1alpha1.Shutdown
	if len(st.ShutdownHistory) > 0 {
		history = make([]v1alpha1.Shutdown, 0, len(st.ShutdownHistory))
	}
	for i := range st.ShutdownHistory {
		history = append(history, *st.ShutdownHistory[i].DeepCopy())
	}
	return Bookkeeping{LastShutdown: st.LastShutdown.DeepCopy(), ShutdownHistory: history, RestartCount: st.RestartCount, HandledVMIUID: st.HandledVMIUID,
		RestartingVMIUID: st.RestartingVMIUID, FailureCount: st.FailureCount, RestartNotBefore: st.RestartNotBefore.DeepCopy()}
}

// Into writes the bookkeeping into st.
func (b Bookkeeping) Into(st *v1alpha1.VirtualMachineStatus) {
	st.LastShutdown, st.ShutdownHistory, st.RestartCount, st.HandledVMIUID = b.LastShutdown, b.ShutdownHistory, b.RestartCount, b.HandledVMIUID
	st.RestartingVMIUID, st.FailureCount, st.RestartNotBefore = b.RestartingVMIUID, b.FailureCount, b.RestartNotBefore
}

// record puts how a VMI ended first in the history (keeping at most v1alpha1.MaxShutdownHistory entries) and makes
// it lastShutdown.
func (b *Bookkeeping) record(e v1alpha1.Shutdown) {
	b.ShutdownHistory = append([]v1alpha1.Shutdown{e}, b.ShutdownHistory...)
	if len(b.ShutdownHistory) > v1alpha1.MaxShutdownHistory {
		b.ShutdownHistory = b.ShutdownHistory[:v1alpha1.MaxShutdownHistory]
	}
	b.LastShutdown = e.DeepCopy()
}

// restarted turns the entry of the VMI uid that waited for its restart into Restarted.
func (b *Bookkeeping) restarted(uid string) {
	b.amendLatest(uid, v1alpha1.ShutdownRestartAfterBackoff, func(e *v1alpha1.Shutdown) {
		e.Action, e.RestartNotBefore = v1alpha1.ShutdownRestarted, nil
	})
}

// withdrawn turns the entry of the VMI uid, whose restart a stop withdrew, into StayedStopped.
func (b *Bookkeeping) withdrawn(uid string) {
	b.amendLatest(uid, "", func(e *v1alpha1.Shutdown) {
		e.Action, e.RestartNotBefore = v1alpha1.ShutdownStayedStopped, nil
		e.Reason += "; a stop through KubeVirt withdrew the restart"
	})
}

// amendLatest changes, with amend, the history's first entry when it is the VMI uid's (and, unless action is "",
// reads action), and keeps LastShutdown its copy. It never writes through to the input's history.
func (b *Bookkeeping) amendLatest(uid string, action v1alpha1.ShutdownAction, amend func(*v1alpha1.Shutdown)) {
	if len(b.ShutdownHistory) == 0 || b.ShutdownHistory[0].VMIUID != uid || (action != "" && b.ShutdownHistory[0].Action != action) {
		return
	}
	b.ShutdownHistory = append([]v1alpha1.Shutdown(nil), b.ShutdownHistory...)
	amend(&b.ShutdownHistory[0])
	b.LastShutdown = b.ShutdownHistory[0].DeepCopy()
}

// ActionKind is what the reconciler does once the step's bookkeeping is written.
type ActionKind string

const (
	// DoNothing: KubeVirt acts, the VM stays as it is, or a later event or the step's requeue brings the next pass.
	DoNothing ActionKind = "None"
	// DoRestart: have KubeVirt start a new VMI, built from the current template, in place of the ended VMI.
	DoRestart ActionKind = "Restart"
	// DoCleanup: delete the ended VMI (UID precondition), so the VM reads Stopped and a later start begins afresh,
	// or so that KubeVirt serves a Start request it holds.
	DoCleanup ActionKind = "Cleanup"
	// DoVerify: a restart was recorded but the cache may lag behind it: read the KubeVirt VM and VMI past the cache
	// and let PendingRestart say whether to send it (again), serve a stale Start request, or wait.
	DoVerify ActionKind = "Verify"
)

// Event is a Kubernetes Event the reconciler sends about the runpolicy VM: the step's own after the status write;
// a restart's once KubeVirt accepted the request.
type Event struct {
	Type, Reason, Message string
}

// PowerAction is the one action of a power step.
type PowerAction struct {
	Kind ActionKind
	// VMIUID is the ended VMI the action is about.
	VMIUID string
	// Event reports a restart (DoRestart, and DoVerify when it sends the restart) once KubeVirt took it.
	Event Event
}

// PowerStep is the outcome of Step.
type PowerStep struct {
	// Status is the new bookkeeping, to be written before Action is carried out.
	Status Bookkeeping
	Action PowerAction
	// Event, when set, is sent once Status is written: how a VMI ended, when nothing restarts it in this pass.
	Event *Event
	// Requeue asks for another pass after the delay (backoff, or a pod still terminating); zero: none.
	Requeue time.Duration
	// Decided is the decision about a VMI seen to end in this pass (nil: none), for the log.
	Decided *Decision
	// Judging: a VMI ended and its decision waits for the launcher pod's message. The reconciler leaves status as
	// it reads meanwhile, so that KubeVirt's passing states cost no write.
	Judging bool
}

// Step decides what to do about the runpolicy VM's VMI (docs/behaviour.md) and returns the bookkeeping that records
// the decision.
//
// Idempotency: a restart of VMI X is recorded in RestartingVMIUID before KubeVirt is asked, and turned into
// HandledVMIUID=X (RestartCount+1) once KubeVirt runs X's successor. A crash anywhere in between leads to the same
// request again — only when KubeVirt holds none (DoVerify) — or to the bookkeeping alone, so one reset never causes
// two new VMIs.
func Step(in PowerInput) PowerStep {
	s := PowerStep{Status: in.Status, Action: PowerAction{Kind: DoNothing}}
	st := &s.Status
	kv, vmi := in.KubeVirt, in.VMI

	// Finish a restart once KubeVirt runs its successor. Until then status keeps reading Starting, so the steps
	// KubeVirt goes through in between (old VMI deleted, new one scheduled) cost no status write.
	if st.RestartingVMIUID != "" && RestartDone(st.RestartingVMIUID, kv, vmi) {
		ended := st.RestartingVMIUID
		st.HandledVMIUID, st.RestartingVMIUID = ended, ""
		st.RestartNotBefore = nil
		if RestartWithdrawn(ended, kv, vmi) {
			st.withdrawn(ended)
			s.Event = &Event{corev1.EventTypeNormal, EventStopped, fmt.Sprintf(
				"A stop through KubeVirt withdrew the restart of the VMI that ended (%s): the VM stays stopped", ended)}
		} else {
			st.RestartCount++
		}
	}
	// A KubeVirt VM being deleted (its namespace goes, or someone deletes it) serves no request: its VMI's end is
	// neither restarted nor recorded. Once it is gone, the VM is as one whose KubeVirt VM was never created.
	if kv == nil || kv.DeletionTimestamp != nil || !in.Managed || vmi == nil || !vmi.IsFinal() {
		return s
	}
	uid := string(vmi.UID)

	// A restart recorded but not sent yet (virt-controller had not seen the VMI end), or perhaps not taken by
	// KubeVirt yet (or a crash right after recording it).
	if st.RestartingVMIUID == uid {
		s.Action = PowerAction{Kind: DoVerify, VMIUID: uid, Event: restartEvent(st, uid)}
		return s
	}
	if st.HandledVMIUID == uid {
		// Already decided. What is left of a VMI that stays stopped is cleaned up (again, if a crash interrupted
		// it) so that the VM reads Stopped and a later Start begins afresh.
		if stopsByPolicy(in.Policy) && vmi.DeletionTimestamp == nil {
			s.Action = PowerAction{Kind: DoCleanup, VMIUID: uid}
		}
		return s
	}

	if in.Cause == shutdown.CauseUnknown && in.PodTerminating && in.Now.Sub(finishedAt(vmi, in.Now)) < PodSettleTimeout {
		s.Requeue = time.Second // the launcher pod may yet publish the hook sidecar's message
		s.Judging = true
		return s
	}
	ended := Ended{Failed: vmi.Status.Phase == kvv1.Failed, Cause: in.Cause, StoppedByUser: StoppedByUser(kv, vmi),
		RebootsStayInGuest: in.RebootsStayInGuest}
	d := Decide(ActingPolicy(in.Policy, kv), ended)
	if ended.StoppedByUser && StartPending(kv) {
		d = restartedByKubeVirt(d)
	}

	// Record how the VMI ended, once. A restart made in this pass reports it in one event, after KubeVirt took
	// the request; anything else is reported once the status is written.
	restartNow := d.Action == ActionRestart
	if d.Action == ActionRestartAfterBackoff {
		if st.RestartNotBefore == nil {
			st.FailureCount++
			st.RestartNotBefore = &metav1.Time{Time: in.Now.Add(in.Backoff.Delay(st.FailureCount))}
		}
		restartNow = !st.RestartNotBefore.After(in.Now)
	}
	if st.LastShutdown == nil || st.LastShutdown.VMIUID != uid {
		s.recordEnd(d, ended, StartPending(kv), uid, restartNow, in.Now)
	}

	restart := PowerAction{Kind: DoRestart, VMIUID: uid, Event: Event{eventType(d.Source), eventReason(d.Source), d.Message}}
	if !KubeVirtSawEnd(vmi) {
		// The restart is recorded now and sent once virt-controller has seen the VMI end: its removal of its
		// finalizer brings the next pass (DoVerify; docs/restart-protocol.md).
		restart = PowerAction{Kind: DoNothing}
	}
	switch d.Action {
	case ActionRestartAfterBackoff:
		if !restartNow {
			s.Requeue = st.RestartNotBefore.Sub(in.Now)
			return s
		}
		st.RestartingVMIUID = uid
		st.restarted(uid)
		s.Action = restart
	case ActionRestart:
		st.FailureCount = 0
		st.RestartNotBefore = nil
		st.RestartingVMIUID = uid
		s.Action = restart
	case ActionStayStopped:
		if d.Source == v1alpha1.ShutdownGuestShutdown || d.Source == v1alpha1.ShutdownUser {
			st.FailureCount = 0
		}
		st.RestartNotBefore = nil
		st.HandledVMIUID = uid
		if vmi.DeletionTimestamp == nil {
			s.Action = PowerAction{Kind: DoCleanup, VMIUID: uid}
		}
	default: // KubeVirt acts (Always, Halted): only report.
		st.HandledVMIUID = uid
	}
	return s
}

// restartedByKubeVirt is the decision about a VMI stopped through KubeVirt for a restart ([Stop{uid}, Start]:
// virtctl restart, a Restart operation): KubeVirt serves the Start once the ended VMI is cleaned up, under every
// policy. AlwaysOn on Manual (a cap on starts) would restart it: a restart of runpolicy's on top would start the VM
// twice.
func restartedByKubeVirt(d Decision) Decision {
	d.Message = "The VMI was stopped through KubeVirt for a restart; KubeVirt starts the new one"
	if d.Action == ActionRestart || d.Action == ActionRestartAfterBackoff {
		d.Action = ActionStayStopped
	}
	return d
}

// recordEnd records how the VMI uid ended, once: first in the shutdown history, with what runpolicy does about it,
// and the event that reports it — unless a restart is made in this pass, which reports it once KubeVirt took it.
func (s *PowerStep) recordEnd(d Decision, ended Ended, startPending bool, uid string, restartNow bool, now time.Time) {
	st := &s.Status
	e := v1alpha1.Shutdown{Source: d.Source, Reason: ReasonText(ended), Time: &metav1.Time{Time: now}, VMIUID: uid,
		Action: shutdownAction(d.Action, restartNow)}
	if ended.StoppedByUser && startPending {
		e.Action = v1alpha1.ShutdownRestarted // a restart through KubeVirt (an operation, virtctl restart)
	}
	if e.Action == v1alpha1.ShutdownRestartAfterBackoff {
		e.RestartNotBefore = st.RestartNotBefore.DeepCopy()
	}
	st.record(e)
	if !restartNow {
		msg := d.Message
		if d.Action == ActionRestartAfterBackoff {
			msg = fmt.Sprintf("%s at %s", msg, st.RestartNotBefore.UTC().Format(time.RFC3339))
		}
		s.Event = &Event{eventType(d.Source), eventReason(d.Source), msg}
	}
	s.Decided = &d
}

// shutdownAction is the history's word for a decision.
func shutdownAction(a Action, restartNow bool) v1alpha1.ShutdownAction {
	switch {
	case a == ActionRestart, a == ActionRestartAfterBackoff && restartNow:
		return v1alpha1.ShutdownRestarted
	case a == ActionRestartAfterBackoff:
		return v1alpha1.ShutdownRestartAfterBackoff
	case a == ActionStayStopped:
		return v1alpha1.ShutdownStayedStopped
	default:
		return v1alpha1.ShutdownLeftToKubeVirt
	}
}

// Ending tells how much longer the VMI's end is awaited: KubeVirt reports its launcher pod terminating (its Ready
// condition, virt-controller's syncReadyConditionFromPod) while the VMI is not final yet, which virt-handler makes
// it next. Zero once it is final, when it is not ending, or PodSettleTimeout after the pod began terminating (a
// VMI that stays so is reported as it is). The reconciler leaves status as it reads meanwhile: the VMI's end decides
// what status says next, and a guest reboot costs no write for "running but not ready".
func Ending(vmi *kvv1.VirtualMachineInstance, now time.Time) time.Duration {
	if !VMIActive(vmi) {
		return 0
	}
	if c := readyCondition(vmi); c != nil && c.Status == corev1.ConditionFalse && c.Reason == kvv1.PodTerminatingReason {
		return max(c.LastTransitionTime.Add(PodSettleTimeout).Sub(now), 0)
	}
	return 0
}

// readyCondition is the VMI's Ready condition (virt-controller's copy of the launcher pod's readiness), nil if unset.
func readyCondition(vmi *kvv1.VirtualMachineInstance) *kvv1.VirtualMachineInstanceCondition {
	for i := range vmi.Status.Conditions {
		if vmi.Status.Conditions[i].Type == kvv1.VirtualMachineInstanceReady {
			return &vmi.Status.Conditions[i]
		}
	}
	return nil
}

// restartEvent reports the restart of the ended VMI uid when it is sent in a later pass than the one that decided
// it: from its shutdown entry.
func restartEvent(st *Bookkeeping, uid string) Event {
	if ls := st.LastShutdown; ls != nil && ls.VMIUID == uid {
		return Event{eventType(ls.Source), eventReason(ls.Source), restartMessage(ls.Source)}
	}
	return Event{corev1.EventTypeNormal, EventRestarting, fmt.Sprintf("Starting a new VMI with the current spec (the previous one, %s, ended)", uid)}
}

// KubeVirtSawEnd tells whether virt-controller's VM controller has seen the ended VMI final (or deleted): it removes
// its finalizer from a VMI only then (pkg/virt-controller/watch/vm/vm.go, updateStatus), from its own cache of
// VMIs. Informers only move forward, so from then on that cache cannot show the VMI running, and a Start request
// written beside it cannot be dropped for a running VMI (isTrimFirstChangeRequestNeeded): runpolicy writes its
// Start alone, and KubeVirt serves it in the pass in which the VMI is gone, as under runStrategy Always.
func KubeVirtSawEnd(vmi *kvv1.VirtualMachineInstance) bool {
	return !slices.Contains(vmi.Finalizers, kvv1.VirtualMachineControllerFinalizer)
}

// PendingRestart says what a recorded restart of the ended VMI uid still needs, from KubeVirt's VM and VMI read
// past the cache (DoVerify); vmi is nil when there is none.
func PendingRestart(kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance, uid types.UID) RestartNext {
	if kv == nil || !StillEnded(vmi, uid) || !KubeVirtSawEnd(vmi) {
		return RestartWait
	}
	// runpolicy's own request is a Start alone, written while the ended VMI is there and before deleting it; virt-api's
	// start writes [Stop{uid}, Start] (under Manual virt-controller deletes the VMI itself on the Stop). A Start without
	// the Stop beside the ended VMI is runpolicy's own from before a crash, or one left from before that VMI: under
	// Manual, KubeVirt serves it once the ended VMI is gone.
	switch {
	case !StartPending(kv):
		return RestartSend
	case StaleStart(kv, uid) && onManual(kv):
		return RestartServeStale
	}
	return RestartWait
}

// StaleStart tells whether KubeVirt holds a Start request without a Stop for the ended VMI uid beside it, which
// KubeVirt serves once the VMI is gone: runpolicy's own restart request, or one left from before that VMI (every
// start through virt-api of a VM whose VMI is final writes [Stop{uid}, Start]).
func StaleStart(kv *kvv1.VirtualMachine, uid types.UID) bool {
	return StartPending(kv) && !StopRequested(kv, uid)
}

// StillEnded tells whether vmi is the ended VMI uid, not yet deleted: only then can a recorded restart of it still
// need runpolicy (PendingRestart); otherwise KubeVirt has taken it.
func StillEnded(vmi *kvv1.VirtualMachineInstance, uid types.UID) bool {
	return vmi != nil && vmi.UID == uid && vmi.DeletionTimestamp == nil && vmi.IsFinal()
}

// RestartNext is what a restart that was recorded but not seen through needs from runpolicy.
type RestartNext int

const (
	// RestartWait: KubeVirt took the request (or the VMI moved on); its next status change brings the next pass.
	RestartWait RestartNext = iota
	// RestartSend: KubeVirt holds no Start request: send the restart (again).
	RestartSend
	// RestartServeStale: KubeVirt holds a Start request beside the ended VMI (no Stop for it), which it will never
	// serve while that VMI exists: delete the VMI.
	RestartServeStale
)

// RestartDone tells whether the restart of VMI uid is over: KubeVirt no longer holds the Start request for it and
// either runs a new VMI (no longer reported as starting), or the new VMI ended already, or there is none to wait
// for. A KubeVirt VM taken off runStrategy Manual meanwhile (a policy change) ends it too: KubeVirt's own strategy
// decides from then on, and a Start request it holds may never be served (Halted ignores it).
func RestartDone(uid string, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	switch {
	case !onManual(kv):
		return true
	case vmi != nil && string(vmi.UID) == uid && vmi.DeletionTimestamp == nil:
		return false // the ended VMI is still there: KubeVirt has not acted yet
	case vmi == nil || string(vmi.UID) == uid:
		// Gone or going: KubeVirt creates the new VMI next, while it holds the Start request. Once it has created
		// it (status.created), the new VMI is on its way to this cache: the restart is done when it runs. Without
		// either, the Start was dropped (a user's stop) and there is nothing to wait for.
		return RestartWithdrawn(uid, kv, vmi)
	case !VMIActive(vmi):
		return true // the new VMI ended already: its own decision follows in this pass
	}
	p := PhaseOf(kv)
	return p != v1alpha1.VirtualMachineStarting && p != v1alpha1.VirtualMachineStopped && !readinessPending(kv, vmi)
}

// RestartWithdrawn tells whether the restart of VMI uid, done by RestartDone, ended without a new VMI: the ended
// VMI is gone or going, KubeVirt holds no Start and reports no VMI created. A stop (an operation's, which removes
// a pending Start) came between runpolicy's request and KubeVirt serving it.
func RestartWithdrawn(uid string, kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	return onManual(kv) && (vmi == nil || string(vmi.UID) == uid) && !StartPending(kv) && !kv.Status.Created
}

// onManual tells whether the KubeVirt VM exists and is on runStrategy Manual, where runpolicy starts its VMIs.
func onManual(kv *kvv1.VirtualMachine) bool {
	return kv != nil && kv.Spec.RunStrategy != nil && *kv.Spec.RunStrategy == kvv1.RunStrategyManual
}

// readinessPending tells whether KubeVirt reports the new VMI Running but has yet to pass on its readiness: it
// copies the launcher pod's readiness into the VMI's Ready condition only once the VMI runs (virt-controller,
// syncReadyConditionFromPod), and into the VM's status.ready in a later pass. Both passes follow from the VMI's own
// changes, so waiting for them ends the restart in one status write (Running and Ready together) instead of two. A
// readiness that KubeVirt judged false (a failing readiness probe) ends the wait.
func readinessPending(kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	if kv.Status.PrintableStatus != kvv1.VirtualMachineStatusRunning || kv.Status.Ready {
		return false
	}
	c := readyCondition(vmi)
	if c == nil {
		return false
	}
	switch c.Reason {
	case kvv1.PodNotExistsReason, kvv1.PodTerminatingReason, kvv1.GuestNotRunningReason, kvv1.PodConditionMissingReason:
		return true // set before the VMI ran: not judged yet
	}
	return c.Status == corev1.ConditionTrue // ready: the VM's status.ready follows
}

// ActingPolicy is the policy whose table applies now: while the KubeVirt VM is not on runStrategy Manual
// (AlwaysOn without a cap on starts, AlwaysOnUntilStoppedManually starting up on Always, or a policy change not yet
// applied), KubeVirt's own strategy acts (KubeVirtAlways, AlwaysOff) and runpolicy must not restart on top of it.
func ActingPolicy(p v1alpha1.RunPolicy, kv *kvv1.VirtualMachine) v1alpha1.RunPolicy {
	switch {
	case kubeVirtReplaces(kv):
		return KubeVirtAlways
	case kv.Spec.RunStrategy != nil && *kv.Spec.RunStrategy == kvv1.RunStrategyHalted:
		return v1alpha1.RunPolicyAlwaysOff
	case p == v1alpha1.RunPolicyAlwaysOn && !onManual(kv):
		// Neither Always nor Manual (a runStrategy someone else set, not reverted yet): never restart on top of it.
		return KubeVirtAlways
	}
	return p
}

// StoppedByUser tells whether the VMI was stopped through KubeVirt: a Stop request for its UID, or a deletion.
// Under runStrategy Always (and RerunOnFailure) KubeVirt itself deletes an ended VMI within milliseconds to
// replace it, so there a deletion says nothing about who stopped it and the termination message decides. Under
// Manual and Halted, KubeVirt never deletes an ended VMI by itself.
func StoppedByUser(kv *kvv1.VirtualMachine, vmi *kvv1.VirtualMachineInstance) bool {
	return StopRequested(kv, vmi.UID) || vmi.DeletionTimestamp != nil && !kubeVirtReplaces(kv)
}

// kubeVirtReplaces tells whether KubeVirt's runStrategy deletes and recreates an ended VMI by itself.
func kubeVirtReplaces(kv *kvv1.VirtualMachine) bool {
	if kv.Spec.RunStrategy == nil {
		return kv.Spec.Running != nil && *kv.Spec.Running
	}
	return *kv.Spec.RunStrategy == kvv1.RunStrategyAlways || *kv.Spec.RunStrategy == kvv1.RunStrategyRerunOnFailure
}

// StartPending tells whether KubeVirt holds a Start request it has not acted on yet.
func StartPending(kv *kvv1.VirtualMachine) bool {
	for _, req := range kv.Status.StateChangeRequests {
		if req.Action == kvv1.StartRequest {
			return true
		}
	}
	return false
}

// StopRequested tells whether KubeVirt holds a Stop request for the VMI uid.
func StopRequested(kv *kvv1.VirtualMachine, uid types.UID) bool {
	for _, req := range kv.Status.StateChangeRequests {
		if req.Action == kvv1.StopRequest && req.UID != nil && *req.UID == uid {
			return true
		}
	}
	return false
}

func stopsByPolicy(p v1alpha1.RunPolicy) bool {
	return p == v1alpha1.RunPolicyManual || p == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually
}

// VMIActive tells whether the VMI exists and has not ended or been asked to go.
func VMIActive(vmi *kvv1.VirtualMachineInstance) bool {
	return vmi != nil && vmi.DeletionTimestamp == nil && !vmi.IsFinal()
}

// PhaseOf maps KubeVirt's printableStatus to runpolicy's phase.
func PhaseOf(kv *kvv1.VirtualMachine) v1alpha1.VirtualMachinePhase {
	if kv == nil {
		return v1alpha1.VirtualMachinePending
	}
	switch kv.Status.PrintableStatus {
	case kvv1.VirtualMachineStatusRunning, kvv1.VirtualMachineStatusPaused, kvv1.VirtualMachineStatusMigrating:
		return v1alpha1.VirtualMachineRunning
	case kvv1.VirtualMachineStatusStarting, kvv1.VirtualMachineStatusProvisioning,
		kvv1.VirtualMachineStatusWaitingForVolumeBinding, kvv1.VirtualMachineStatusWaitingForReceiver:
		return v1alpha1.VirtualMachineStarting
	case kvv1.VirtualMachineStatusStopping:
		return v1alpha1.VirtualMachineStopping
	case kvv1.VirtualMachineStatusTerminating:
		return v1alpha1.VirtualMachineTerminating
	case kvv1.VirtualMachineStatusStopped, "":
		return v1alpha1.VirtualMachineStopped
	default: // CrashLoopBackOff, Unschedulable, ErrImagePull, PvcNotFound, DataVolumeError, ...
		return v1alpha1.VirtualMachinePending
	}
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

// ReasonText is status.lastShutdown.reason for an ended VMI.
func ReasonText(e Ended) string {
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
