package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// TestStep is the power state machine, one row per transition (docs/behaviour.md, docs/restart-protocol.md).
func TestStep(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	backoff := Backoff{Base: 10 * time.Second, Max: time.Minute}
	const old, cur = "vmi-old", "vmi-1"

	kubeVirt := func(rs kvv1.VirtualMachineRunStrategy, reqs ...kvv1.VirtualMachineStateChangeRequest) *kvv1.VirtualMachine {
		return &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(rs)},
			Status: kvv1.VirtualMachineStatus{StateChangeRequests: reqs, PrintableStatus: kvv1.VirtualMachineStatusStopped}}
	}
	manual := kubeVirt(kvv1.RunStrategyManual)
	running := kubeVirt(kvv1.RunStrategyManual)
	running.Status.PrintableStatus = kvv1.VirtualMachineStatusRunning
	start := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StartRequest}
	stop := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StopRequest, UID: ptr.To(types.UID(cur))}

	type vmiOpt func(*kvv1.VirtualMachineInstance)
	vmi := func(uid string, phase kvv1.VirtualMachineInstancePhase, opts ...vmiOpt) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)},
			Status: kvv1.VirtualMachineInstanceStatus{Phase: phase,
				PhaseTransitionTimestamps: []kvv1.VirtualMachineInstancePhaseTransitionTimestamp{{Phase: phase,
					PhaseTransitionTimestamp: metav1.Time{Time: now.Add(-time.Second)}}}}}
		for _, o := range opts {
			o(v)
		}
		return v
	}
	deleting := func(v *kvv1.VirtualMachineInstance) { v.DeletionTimestamp = &metav1.Time{Time: now} }
	// unseen: virt-controller has not seen the VMI end yet (its finalizer is still there).
	unseen := func(v *kvv1.VirtualMachineInstance) { v.Finalizers = []string{kvv1.VirtualMachineControllerFinalizer} }
	endedAt := func(d time.Duration) vmiOpt {
		return func(v *kvv1.VirtualMachineInstance) {
			v.Status.PhaseTransitionTimestamps[0].PhaseTransitionTimestamp.Time = now.Add(-d)
		}
	}
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	shut := func(src v1alpha1.ShutdownSource, uid string) *v1alpha1.Shutdown {
		return &v1alpha1.Shutdown{Source: src, VMIUID: uid}
	}

	type want struct {
		status  Bookkeeping
		action  ActionKind
		event   string // reason of the event sent after the status write; "" for none
		evType  string
		requeue time.Duration
		decided Action // the decision about a VMI seen to end; "" for none
		judging bool   // the end is being judged: status left as it reads
		// historyAction, when set, is the action the history's first entry must read.
		historyAction v1alpha1.ShutdownAction
		// restartEvent is the reason of the event a restart reports once KubeVirt took it.
		restartEvent string
	}
	cases := []struct {
		name           string
		policy         v1alpha1.RunPolicy
		kv             *kvv1.VirtualMachine
		notOurs        bool
		vmi            *kvv1.VirtualMachineInstance
		cause          shutdown.Cause
		podTerminating bool
		noSidecar      bool
		status         Bookkeeping
		want           want
	}{
		// Nothing to decide.
		{name: "no KubeVirt VM", policy: v1alpha1.RunPolicyManual, vmi: vmi(cur, kvv1.Succeeded),
			want: want{action: DoNothing}},
		{name: "a KubeVirt VM that is not ours is never acted on", policy: v1alpha1.RunPolicyManual, kv: manual, notOurs: true,
			vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset, want: want{action: DoNothing}},
		{name: "no VMI", policy: v1alpha1.RunPolicyManual, kv: manual, want: want{action: DoNothing}},
		{name: "a KubeVirt VM being deleted (its namespace goes): a failed VMI is neither restarted nor recorded",
			policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: func() *kvv1.VirtualMachine {
				k := kubeVirt(kvv1.RunStrategyManual)
				k.DeletionTimestamp = &metav1.Time{Time: now}
				return k
			}(), vmi: vmi(cur, kvv1.Failed), want: want{action: DoNothing}},
		{name: "a KubeVirt VM being deleted: a recorded restart is not sent", policy: v1alpha1.RunPolicyManual,
			kv: func() *kvv1.VirtualMachine {
				k := kubeVirt(kvv1.RunStrategyManual)
				k.DeletionTimestamp = &metav1.Time{Time: now}
				return k
			}(), vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{RestartingVMIUID: cur},
			want: want{status: Bookkeeping{RestartingVMIUID: cur}, action: DoNothing}},
		{name: "a running VMI", policy: v1alpha1.RunPolicyManual, kv: running, vmi: vmi(cur, kvv1.Running),
			want: want{action: DoNothing}},

		// Finishing a recorded restart.
		{name: "restart done: KubeVirt runs the successor", policy: v1alpha1.RunPolicyManual, kv: running, vmi: vmi(cur, kvv1.Running),
			status: Bookkeeping{RestartingVMIUID: old, RestartCount: 2, RestartNotBefore: at(-time.Second)},
			want:   want{status: Bookkeeping{HandledVMIUID: old, RestartCount: 3}, action: DoNothing}},
		{name: "restart not done: the successor is still starting", policy: v1alpha1.RunPolicyManual,
			kv: func() *kvv1.VirtualMachine {
				k := kubeVirt(kvv1.RunStrategyManual)
				k.Status.PrintableStatus = kvv1.VirtualMachineStatusStarting
				return k
			}(), vmi: vmi(cur, kvv1.Scheduling), status: Bookkeeping{RestartingVMIUID: old},
			want: want{status: Bookkeeping{RestartingVMIUID: old}, action: DoNothing}},
		{name: "restart not done: the ended VMI is gone, KubeVirt holds the Start", policy: v1alpha1.RunPolicyManual,
			kv: kubeVirt(kvv1.RunStrategyManual, start), status: Bookkeeping{RestartingVMIUID: old},
			want: want{status: Bookkeeping{RestartingVMIUID: old}, action: DoNothing}},
		{name: "restart withdrawn: the ended VMI gone, no Start, no VMI created (a stop dropped it): stays stopped, not counted",
			policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			status: Bookkeeping{RestartingVMIUID: old, RestartCount: 2, LastShutdown: shut(v1alpha1.ShutdownGuestReset, old),
				ShutdownHistory: []v1alpha1.Shutdown{{Source: v1alpha1.ShutdownGuestReset, VMIUID: old, Action: v1alpha1.ShutdownRestarted}}},
			want: want{status: Bookkeeping{HandledVMIUID: old, RestartCount: 2, LastShutdown: shut(v1alpha1.ShutdownGuestReset, old)},
				action: DoNothing, event: EventStopped, evType: corev1.EventTypeNormal, historyAction: v1alpha1.ShutdownStayedStopped}},
		{name: "restart done, and the successor ended already: decided in the same pass", policy: v1alpha1.RunPolicyManual,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset, status: Bookkeeping{RestartingVMIUID: old, RestartCount: 1},
			want: want{status: Bookkeeping{HandledVMIUID: old, RestartCount: 2, RestartingVMIUID: cur,
				LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoRestart, decided: ActionRestart, restartEvent: EventGuestReset}},
		{name: "a restart recorded for the ended VMI: verify past the cache", policy: v1alpha1.RunPolicyManual, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoVerify,
				restartEvent: EventGuestReset}},
		{name: "a restart recorded without its shutdown entry: the generic event", policy: v1alpha1.RunPolicyManual, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, old)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, old)}, action: DoVerify,
				restartEvent: EventRestarting}},

		// Already decided.
		{name: "handled, stays stopped: clean the VMI up (again)", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{HandledVMIUID: cur},
			want: want{status: Bookkeeping{HandledVMIUID: cur}, action: DoCleanup}},
		{name: "handled, being deleted: nothing", policy: v1alpha1.RunPolicyManual, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded, deleting), status: Bookkeeping{HandledVMIUID: cur},
			want: want{status: Bookkeeping{HandledVMIUID: cur}, action: DoNothing}},
		{name: "handled under AlwaysOn: KubeVirt's", policy: v1alpha1.RunPolicyAlwaysOn, kv: kubeVirt(kvv1.RunStrategyAlways),
			vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{HandledVMIUID: cur},
			want: want{status: Bookkeeping{HandledVMIUID: cur}, action: DoNothing}},

		// Waiting for the launcher pod's termination message.
		{name: "pod still terminating, no reason yet: wait", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Succeeded),
			podTerminating: true, want: want{action: DoNothing, requeue: time.Second, judging: true}},
		{name: "pod still terminating past the settle timeout: judged without it", policy: v1alpha1.RunPolicyManual, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded, endedAt(PodSettleTimeout)), podTerminating: true,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownUnknown, cur)}, action: DoCleanup,
				event: EventCrashed, evType: corev1.EventTypeWarning, decided: ActionStayStopped}},
		{name: "pod still terminating, reason known: no wait", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Succeeded),
			podTerminating: true, cause: shutdown.CauseGuestShutdown,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoCleanup,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},

		// Manual.
		{name: "Manual, guest reset: restart", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Succeeded),
			cause: shutdown.CauseGuestReset, status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(time.Minute)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoRestart,
				decided: ActionRestart, restartEvent: EventGuestReset}},
		{name: "Manual, guest reset before virt-controller saw the VMI end: recorded now, sent once it did", policy: v1alpha1.RunPolicyManual,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded, unseen), cause: shutdown.CauseGuestReset, status: Bookkeeping{FailureCount: 2},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoNothing,
				decided: ActionRestart}},
		{name: "Manual, guest poweroff before virt-controller saw the VMI end: stays stopped at once", policy: v1alpha1.RunPolicyManual,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded, unseen), cause: shutdown.CauseGuestShutdown,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoCleanup,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},
		{name: "a restart recorded before virt-controller saw the VMI end: verified (and sent) with the decision's event", policy: v1alpha1.RunPolicyManual,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded, unseen), status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownHostReset, cur)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownHostReset, cur)}, action: DoVerify,
				restartEvent: EventHostReset}},
		{name: "Manual, host reset (virtctl reset): restart", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Succeeded),
			cause: shutdown.CauseHostReset,
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownHostReset, cur)}, action: DoRestart,
				decided: ActionRestart, restartEvent: EventHostReset}},
		{name: "Manual, guest poweroff: stays stopped", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Succeeded),
			cause: shutdown.CauseGuestShutdown,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoCleanup,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},
		{name: "Manual, crash: stays stopped", policy: v1alpha1.RunPolicyManual, kv: manual, vmi: vmi(cur, kvv1.Failed),
			status: Bookkeeping{FailureCount: 1},
			want: want{status: Bookkeeping{HandledVMIUID: cur, FailureCount: 1, LastShutdown: shut(v1alpha1.ShutdownCrash, cur)}, action: DoCleanup,
				event: EventCrashed, evType: corev1.EventTypeWarning, decided: ActionStayStopped}},
		{name: "Manual, stopped through KubeVirt and already deleted: stays stopped, nothing to clean", policy: v1alpha1.RunPolicyManual,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded, deleting), cause: shutdown.CauseGuestShutdown,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownUser, cur)}, action: DoNothing,
				event: EventStopped, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},
		{name: "Manual, no sidecar, clean end: reboots stayed in the guest, so a poweroff", policy: v1alpha1.RunPolicyManual, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), noSidecar: true,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoCleanup,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},

		// AlwaysOnUntilStoppedManually.
		{name: "AOUSM, guest reset: restart, failures forgotten", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset, status: Bookkeeping{FailureCount: 3},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoRestart,
				decided: ActionRestart, restartEvent: EventGuestReset}},
		{name: "AOUSM, guest poweroff: stays stopped, failures forgotten", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestShutdown, status: Bookkeeping{FailureCount: 3},
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoCleanup,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},
		{name: "AOUSM, a user's stop (Stop request): stays stopped", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			kv: kubeVirt(kvv1.RunStrategyManual, stop), vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{FailureCount: 1},
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownUser, cur)}, action: DoCleanup,
				event: EventStopped, evType: corev1.EventTypeNormal, decided: ActionStayStopped}},
		{name: "AOUSM, first crash: restart at once", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Failed),
			want: want{status: Bookkeeping{RestartingVMIUID: cur, FailureCount: 1, RestartNotBefore: at(0), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoRestart, decided: ActionRestartAfterBackoff, restartEvent: EventCrashed}},
		{name: "AOUSM, first crash before virt-controller saw the VMI end: recorded now, sent once it did", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			kv: manual, vmi: vmi(cur, kvv1.Failed, unseen),
			want: want{status: Bookkeeping{RestartingVMIUID: cur, FailureCount: 1, RestartNotBefore: at(0), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoNothing, decided: ActionRestartAfterBackoff}},
		{name: "AOUSM, second crash before virt-controller saw the VMI end: the backoff is recorded at once", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			kv: manual, vmi: vmi(cur, kvv1.Failed, unseen), cause: shutdown.CauseGuestPanic, status: Bookkeeping{FailureCount: 1},
			want: want{status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(10 * time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoNothing, event: EventCrashed, evType: corev1.EventTypeWarning, requeue: 10 * time.Second, decided: ActionRestartAfterBackoff}},
		{name: "AOUSM, backoff over before virt-controller saw the VMI end: recorded, sent once it did", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Failed, unseen), status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(-time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, FailureCount: 2, RestartNotBefore: at(-time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoNothing}},
		{name: "AOUSM, second crash in a row: back off", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Failed), cause: shutdown.CauseGuestPanic, status: Bookkeeping{FailureCount: 1},
			want: want{status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(10 * time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoNothing, event: EventCrashed, evType: corev1.EventTypeWarning, requeue: 10 * time.Second, decided: ActionRestartAfterBackoff}},
		{name: "AOUSM, backing off: wait out the rest", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Failed), status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(4 * time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
			want: want{status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(4 * time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoNothing, requeue: 4 * time.Second}},
		{name: "AOUSM, backoff over: restart, reported once KubeVirt took it", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, kv: manual,
			vmi: vmi(cur, kvv1.Failed), status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(-time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
			want: want{status: Bookkeeping{RestartingVMIUID: cur, FailureCount: 2, RestartNotBefore: at(-time.Second), LastShutdown: shut(v1alpha1.ShutdownCrash, cur)},
				action: DoRestart, restartEvent: EventCrashed}},
		{name: "AOUSM, unknown end: never guessed as a reboot, restarted after backoff", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			kv: manual, vmi: vmi(cur, kvv1.Succeeded), status: Bookkeeping{FailureCount: 1},
			want: want{status: Bookkeeping{FailureCount: 2, RestartNotBefore: at(10 * time.Second), LastShutdown: shut(v1alpha1.ShutdownUnknown, cur)},
				action: DoNothing, event: EventCrashed, evType: corev1.EventTypeWarning, requeue: 10 * time.Second, decided: ActionRestartAfterBackoff}},
		{name: "AOUSM still on Always (starting up): KubeVirt's strategy acts", policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually,
			kv: kubeVirt(kvv1.RunStrategyAlways), vmi: vmi(cur, kvv1.Succeeded, deleting), cause: shutdown.CauseGuestShutdown,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestShutdown, cur)}, action: DoNothing,
				event: EventGuestShutdown, evType: corev1.EventTypeNormal, decided: ActionNone}},

		// KubeVirt's own strategies.
		{name: "AlwaysOn: KubeVirt restarts, runpolicy reports", policy: v1alpha1.RunPolicyAlwaysOn, kv: kubeVirt(kvv1.RunStrategyAlways),
			vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoNothing,
				event: EventGuestReset, evType: corev1.EventTypeNormal, decided: ActionNone}},
		{name: "AlwaysOff: KubeVirt keeps it off", policy: v1alpha1.RunPolicyAlwaysOff, kv: kubeVirt(kvv1.RunStrategyHalted),
			vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoNothing,
				event: EventGuestReset, evType: corev1.EventTypeNormal, decided: ActionNone}},
		{name: "a Manual VM still on Halted (policy change not applied): KubeVirt's", policy: v1alpha1.RunPolicyManual,
			kv: kubeVirt(kvv1.RunStrategyHalted), vmi: vmi(cur, kvv1.Succeeded), cause: shutdown.CauseGuestReset,
			want: want{status: Bookkeeping{HandledVMIUID: cur, LastShutdown: shut(v1alpha1.ShutdownGuestReset, cur)}, action: DoNothing,
				event: EventGuestReset, evType: corev1.EventTypeNormal, decided: ActionNone}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cause := c.cause
			if cause == "" {
				cause = shutdown.CauseUnknown
			}
			in := PowerInput{Policy: c.policy, KubeVirt: c.kv, Managed: c.kv != nil && !c.notOurs, VMI: c.vmi, Cause: cause,
				PodTerminating: c.podTerminating, RebootsStayInGuest: c.noSidecar, Status: c.status, Now: now, Backoff: backoff}
			got := Step(in)
			if g, w := bookkeepingString(got.Status), bookkeepingString(c.want.status); g != w {
				t.Errorf("status\n got %s\nwant %s", g, w)
			}
			if got.Action.Kind != c.want.action {
				t.Errorf("action = %s, want %s", got.Action.Kind, c.want.action)
			}
			if c.want.action != DoNothing && c.vmi != nil && got.Action.VMIUID != string(c.vmi.UID) {
				t.Errorf("action's VMI = %q, want %q", got.Action.VMIUID, c.vmi.UID)
			}
			if got.Action.Event.Reason != c.want.restartEvent {
				t.Errorf("restart event = %q, want %q", got.Action.Event.Reason, c.want.restartEvent)
			}
			switch {
			case c.want.event == "" && got.Event != nil:
				t.Errorf("event %+v, want none", *got.Event)
			case c.want.event != "" && got.Event == nil:
				t.Errorf("no event, want %s", c.want.event)
			case got.Event != nil && (got.Event.Reason != c.want.event || got.Event.Type != c.want.evType || got.Event.Message == ""):
				t.Errorf("event %+v, want %s %s with a message", *got.Event, c.want.evType, c.want.event)
			}
			if got.Judging != c.want.judging {
				t.Errorf("judging = %v, want %v", got.Judging, c.want.judging)
			}
			if got.Requeue != c.want.requeue {
				t.Errorf("requeue = %s, want %s", got.Requeue, c.want.requeue)
			}
			switch {
			case c.want.decided == "" && got.Decided != nil:
				t.Errorf("decided %+v, want no new decision", *got.Decided)
			case c.want.decided != "" && (got.Decided == nil || got.Decided.Action != c.want.decided):
				t.Errorf("decided %+v, want %s", got.Decided, c.want.decided)
			}
			h := got.Status.ShutdownHistory
			switch {
			case got.Decided != nil && (len(h) != len(c.status.ShutdownHistory)+1 || h[0].Action != historyAction(got.Decided.Action, got.Action.Kind, got.Status.RestartingVMIUID != "")):
				t.Errorf("history %+v: want the decision %s first", h, got.Decided.Action)
			case got.Decided == nil && len(h) != len(c.status.ShutdownHistory):
				t.Errorf("history %+v: want no new entry", h)
			case c.want.historyAction != "" && (len(h) == 0 || h[0].Action != c.want.historyAction):
				t.Errorf("history %+v: want its first entry %s", h, c.want.historyAction)
			case len(h) > 0 && !equality.Semantic.DeepEqual(&h[0], got.Status.LastShutdown):
				t.Errorf("lastShutdown %+v is not the history's first entry %+v", got.Status.LastShutdown, h[0])
			}
			if ls := got.Status.LastShutdown; ls != nil && c.status.LastShutdown == nil && (ls.Reason == "" || ls.Time == nil || !ls.Time.Equal(&metav1.Time{Time: now})) {
				t.Errorf("lastShutdown %+v: want a reason and the pass's time", *ls)
			}
		})
	}
}

// A user's stop through KubeVirt for a restart (virtctl restart: [Stop{uid}, Start]) is reported as such.
func TestStepUserRestartMessage(t *testing.T) {
	kv := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual)},
		Status: kvv1.VirtualMachineStatus{StateChangeRequests: []kvv1.VirtualMachineStateChangeRequest{
			{Action: kvv1.StopRequest, UID: ptr.To(types.UID("vmi-1"))}, {Action: kvv1.StartRequest}}}}
	vmi := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: "vmi-1"}, Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Succeeded}}
	got := Step(PowerInput{Policy: v1alpha1.RunPolicyManual, KubeVirt: kv, Managed: true, VMI: vmi, Cause: shutdown.CauseUnknown, Now: time.Now()})
	if got.Event == nil || !strings.Contains(got.Event.Message, "KubeVirt starts the new one") {
		t.Fatalf("event = %+v, want the restart-through-KubeVirt message", got.Event)
	}
	if h := got.Status.ShutdownHistory; len(h) != 1 || h[0].Source != v1alpha1.ShutdownUser || h[0].Action != v1alpha1.ShutdownRestarted {
		t.Fatalf("history %+v, want the user's restart recorded as Restarted", h)
	}
	if got.Status.HandledVMIUID != "vmi-1" || got.Action.Kind != DoCleanup {
		t.Fatalf("got %+v, want the VMI handled and cleaned up (KubeVirt starts the next one)", got)
	}
}

// The bookkeeping round-trips through a VM's status, and Step does not change its input's status.
func TestBookkeepingRoundTrip(t *testing.T) {
	st := &v1alpha1.VirtualMachineStatus{Phase: v1alpha1.VirtualMachineRunning, RestartCount: 3, HandledVMIUID: "a", RestartingVMIUID: "b",
		FailureCount: 2, RestartNotBefore: &metav1.Time{Time: time.Unix(100, 0)}, LastShutdown: &v1alpha1.Shutdown{Source: v1alpha1.ShutdownCrash, VMIUID: "a"}}
	b := BookkeepingOf(st)
	b.LastShutdown.Source = v1alpha1.ShutdownUser
	if st.LastShutdown.Source != v1alpha1.ShutdownCrash {
		t.Fatal("BookkeepingOf must copy, not alias, lastShutdown")
	}
	var out v1alpha1.VirtualMachineStatus
	BookkeepingOf(st).Into(&out)
	out.Phase = st.Phase
	if bookkeepingString(BookkeepingOf(&out)) != bookkeepingString(BookkeepingOf(st)) {
		t.Fatalf("round trip: %+v != %+v", out, *st)
	}
}

// historyAction is the history's word for what a step did.
func historyAction(d Action, did ActionKind, restarting bool) v1alpha1.ShutdownAction {
	switch {
	case did == DoRestart, restarting: // sent now, or recorded and sent once virt-controller saw the end
		return v1alpha1.ShutdownRestarted
	case d == ActionRestartAfterBackoff:
		return v1alpha1.ShutdownRestartAfterBackoff
	case d == ActionStayStopped:
		return v1alpha1.ShutdownStayedStopped
	}
	return v1alpha1.ShutdownLeftToKubeVirt
}

// The history keeps the last v1alpha1.MaxShutdownHistory ended VMIs, newest first; a restart that waited out its
// backoff turns its entry into Restarted; Step never writes through to its input.
func TestStepShutdownHistory(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	kv := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual)}}
	var st Bookkeeping
	for i := range v1alpha1.MaxShutdownHistory + 2 {
		uid := types.UID(fmt.Sprintf("vmi-%d", i))
		vmi := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: uid}, Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Succeeded}}
		st = Step(PowerInput{Policy: v1alpha1.RunPolicyManual, KubeVirt: kv, Managed: true, VMI: vmi, Cause: shutdown.CauseGuestShutdown,
			Status: st, Now: now.Add(time.Duration(i) * time.Minute)}).Status
	}
	h := st.ShutdownHistory
	if len(h) != v1alpha1.MaxShutdownHistory || h[0].VMIUID != "vmi-11" || h[len(h)-1].VMIUID != "vmi-2" {
		t.Fatalf("history of %d entries from %s to %s, want the last %d, newest first", len(h), h[0].VMIUID, h[len(h)-1].VMIUID,
			v1alpha1.MaxShutdownHistory)
	}
	if h[0].Action != v1alpha1.ShutdownStayedStopped || h[0].Source != v1alpha1.ShutdownGuestShutdown || !h[0].Time.Equal(&metav1.Time{Time: now.Add(11 * time.Minute)}) {
		t.Fatalf("newest entry %+v", h[0])
	}

	// A second crash in a row backs off; once the delay passed, the restart turns the entry into Restarted.
	failed := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: "vmi-f"}, Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Failed}}
	in := PowerInput{Policy: v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, KubeVirt: kv, Managed: true, VMI: failed, Cause: shutdown.CauseUnknown,
		Status: Bookkeeping{FailureCount: 1, ShutdownHistory: h}, Now: now, Backoff: Backoff{Base: 10 * time.Second, Max: time.Minute}}
	waiting := Step(in).Status
	if e := waiting.ShutdownHistory[0]; e.Action != v1alpha1.ShutdownRestartAfterBackoff || e.RestartNotBefore == nil ||
		!e.RestartNotBefore.Equal(&metav1.Time{Time: now.Add(10 * time.Second)}) {
		t.Fatalf("backing off: entry %+v, want RestartAfterBackoff until now+10s", e)
	}
	in.Status, in.Now = waiting, now.Add(11*time.Second)
	before := BookkeepingOf(&v1alpha1.VirtualMachineStatus{ShutdownHistory: waiting.ShutdownHistory})
	done := Step(in)
	if e := done.Status.ShutdownHistory[0]; done.Action.Kind != DoRestart || e.Action != v1alpha1.ShutdownRestarted || e.RestartNotBefore != nil ||
		done.Status.LastShutdown.Action != v1alpha1.ShutdownRestarted {
		t.Fatalf("backoff over: %s, entry %+v, lastShutdown %+v; want a restart recorded as Restarted", done.Action.Kind, e, done.Status.LastShutdown)
	}
	if waiting.ShutdownHistory[0].Action != before.ShutdownHistory[0].Action {
		t.Fatal("Step changed its input's history")
	}
}

func bookkeepingString(b Bookkeeping) string {
	ls := "nil"
	if b.LastShutdown != nil {
		ls = fmt.Sprintf("{%s %s}", b.LastShutdown.Source, b.LastShutdown.VMIUID)
	}
	nb := "nil"
	if b.RestartNotBefore != nil {
		nb = b.RestartNotBefore.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("restarting=%q handled=%q restarts=%d failures=%d notBefore=%s lastShutdown=%s",
		b.RestartingVMIUID, b.HandledVMIUID, b.RestartCount, b.FailureCount, nb, ls)
}

// An AlwaysOn VM rendered on runStrategy Manual (under a cap on starts) is kept running by runpolicy: every end is
// restarted (a crash after the backoff), a user's restart through KubeVirt is left to KubeVirt, and on runStrategy
// Always KubeVirt restarts it itself.
func TestStepAlwaysOnOnManual(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	kv := func(rs kvv1.VirtualMachineRunStrategy, reqs ...kvv1.VirtualMachineStateChangeRequest) *kvv1.VirtualMachine {
		return &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(rs)},
			Status: kvv1.VirtualMachineStatus{StateChangeRequests: reqs, PrintableStatus: kvv1.VirtualMachineStatusStopped}}
	}
	vmi := func(phase kvv1.VirtualMachineInstancePhase) *kvv1.VirtualMachineInstance {
		return &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: "vmi-1"},
			Status: kvv1.VirtualMachineInstanceStatus{Phase: phase}}
	}
	restartReqs := []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StopRequest, UID: ptr.To(types.UID("vmi-1"))},
		{Action: kvv1.StartRequest}}
	for _, c := range []struct {
		name       string
		kv         *kvv1.VirtualMachine
		vmi        *kvv1.VirtualMachineInstance
		cause      shutdown.Cause
		action     ActionKind
		restarting bool
		history    v1alpha1.ShutdownAction
	}{
		{"guest poweroff: started again", kv(kvv1.RunStrategyManual), vmi(kvv1.Succeeded), shutdown.CauseGuestShutdown,
			DoRestart, true, v1alpha1.ShutdownRestarted},
		{"guest reset: restarted", kv(kvv1.RunStrategyManual), vmi(kvv1.Succeeded), shutdown.CauseGuestReset,
			DoRestart, true, v1alpha1.ShutdownRestarted},
		{"first crash: restarted at once", kv(kvv1.RunStrategyManual), vmi(kvv1.Failed), shutdown.CauseUnknown,
			DoRestart, true, v1alpha1.ShutdownRestarted},
		{"a user's restart through KubeVirt: KubeVirt serves its Start", kv(kvv1.RunStrategyManual, restartReqs...),
			vmi(kvv1.Succeeded), shutdown.CauseGuestShutdown, DoCleanup, false, v1alpha1.ShutdownRestarted},
		{"on runStrategy Always: KubeVirt restarts it", kv(kvv1.RunStrategyAlways), vmi(kvv1.Failed), shutdown.CauseUnknown,
			DoNothing, false, v1alpha1.ShutdownLeftToKubeVirt},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Step(PowerInput{Policy: v1alpha1.RunPolicyAlwaysOn, KubeVirt: c.kv, Managed: true, VMI: c.vmi,
				Cause: c.cause, Now: now, Backoff: DefaultBackoff})
			if got.Action.Kind != c.action {
				t.Errorf("action %s, want %s", got.Action.Kind, c.action)
			}
			if restarting := got.Status.RestartingVMIUID == "vmi-1"; restarting != c.restarting {
				t.Errorf("restartingVMIUID %q, want recorded: %v", got.Status.RestartingVMIUID, c.restarting)
			}
			if h := got.Status.ShutdownHistory; len(h) != 1 || h[0].Action != c.history {
				t.Errorf("history %+v, want one entry %s", h, c.history)
			}
		})
	}
}
