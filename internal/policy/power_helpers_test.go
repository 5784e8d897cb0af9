package policy

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

func TestPhaseOf(t *testing.T) {
	cases := map[kvv1.VirtualMachinePrintableStatus]v1alpha1.VirtualMachinePhase{
		kvv1.VirtualMachineStatusStopped:          v1alpha1.VirtualMachineStopped,
		kvv1.VirtualMachineStatusProvisioning:     v1alpha1.VirtualMachineStarting,
		kvv1.VirtualMachineStatusStarting:         v1alpha1.VirtualMachineStarting,
		kvv1.VirtualMachineStatusRunning:          v1alpha1.VirtualMachineRunning,
		kvv1.VirtualMachineStatusPaused:           v1alpha1.VirtualMachineRunning,
		kvv1.VirtualMachineStatusStopping:         v1alpha1.VirtualMachineStopping,
		kvv1.VirtualMachineStatusTerminating:      v1alpha1.VirtualMachineTerminating,
		kvv1.VirtualMachineStatusCrashLoopBackOff: v1alpha1.VirtualMachinePending,
		kvv1.VirtualMachineStatusUnschedulable:    v1alpha1.VirtualMachinePending,
		"":                                        v1alpha1.VirtualMachineStopped,
	}
	for ps, want := range cases {
		if got := PhaseOf(&kvv1.VirtualMachine{Status: kvv1.VirtualMachineStatus{PrintableStatus: ps}}); got != want {
			t.Errorf("PhaseOf(%q) = %s, want %s", ps, got, want)
		}
	}
	if got := PhaseOf(nil); got != v1alpha1.VirtualMachinePending {
		t.Errorf("PhaseOf(nil) = %s", got)
	}
}

func TestRestartDone(t *testing.T) {
	const old = "old-uid"
	vmi := func(uid string, phase kvv1.VirtualMachineInstancePhase, deleting bool) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Status: kvv1.VirtualMachineInstanceStatus{Phase: phase}}
		if deleting {
			v.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		}
		return v
	}
	kv := func(printable kvv1.VirtualMachinePrintableStatus, startPending bool) *kvv1.VirtualMachine {
		k := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual)},
			Status: kvv1.VirtualMachineStatus{PrintableStatus: printable}}
		if startPending {
			k.Status.StateChangeRequests = []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}}
		}
		return k
	}
	ready := func(v *kvv1.VirtualMachineInstance, st corev1.ConditionStatus, reason string) *kvv1.VirtualMachineInstance {
		v.Status.Conditions = append(v.Status.Conditions, kvv1.VirtualMachineInstanceCondition{Type: kvv1.VirtualMachineInstanceReady,
			Status: st, Reason: reason})
		return v
	}
	halted := kv(kvv1.VirtualMachineStatusStopped, true)
	halted.Spec.RunStrategy = ptr.To(kvv1.RunStrategyHalted)
	cases := []struct {
		name string
		kv   *kvv1.VirtualMachine
		vmi  *kvv1.VirtualMachineInstance
		want bool
	}{
		{"ended VMI still there", kv(kvv1.VirtualMachineStatusStopped, true), vmi(old, kvv1.Succeeded, false), false},
		{"ended VMI being deleted, start pending", kv(kvv1.VirtualMachineStatusStopped, true), vmi(old, kvv1.Succeeded, true), false},
		{"ended VMI being deleted, no start pending", kv(kvv1.VirtualMachineStatusStopped, false), vmi(old, kvv1.Succeeded, true), true},
		{"no VMI, start pending", kv(kvv1.VirtualMachineStatusStopped, true), nil, false},
		{"no VMI, no start pending: the Start was dropped", kv(kvv1.VirtualMachineStatusStopped, false), nil, true},
		{"no VMI in this cache, but KubeVirt served the Start: the new VMI is on its way", func() *kvv1.VirtualMachine {
			k := kv(kvv1.VirtualMachineStatusStarting, false)
			k.Status.Created = true
			return k
		}(), nil, false},
		{"ended VMI being deleted, KubeVirt VM status from a pass that served the Start", func() *kvv1.VirtualMachine {
			k := kv(kvv1.VirtualMachineStatusStarting, false)
			k.Status.Created = true
			return k
		}(), vmi(old, kvv1.Succeeded, true), false},
		{"new VMI scheduling", kv(kvv1.VirtualMachineStatusStarting, false), vmi("new", kvv1.Scheduling, false), false},
		{"new VMI, KubeVirt VM not updated yet", kv(kvv1.VirtualMachineStatusStopped, false), vmi("new", kvv1.Scheduled, false), false},
		{"new VMI running, no readiness condition", kv(kvv1.VirtualMachineStatusRunning, false), vmi("new", kvv1.Running, false), true},
		{"new VMI running, its readiness not judged yet", kv(kvv1.VirtualMachineStatusRunning, false),
			ready(vmi("new", kvv1.Running, false), corev1.ConditionFalse, kvv1.GuestNotRunningReason), false},
		{"new VMI running and ready, the KubeVirt VM not saying so yet", kv(kvv1.VirtualMachineStatusRunning, false),
			ready(vmi("new", kvv1.Running, false), corev1.ConditionTrue, ""), false},
		{"new VMI running and ready", func() *kvv1.VirtualMachine {
			k := kv(kvv1.VirtualMachineStatusRunning, false)
			k.Status.Ready = true
			return k
		}(), ready(vmi("new", kvv1.Running, false), corev1.ConditionTrue, ""), true},
		{"new VMI running, its readiness probe failing", kv(kvv1.VirtualMachineStatusRunning, false),
			ready(vmi("new", kvv1.Running, false), corev1.ConditionFalse, "ContainersNotReady"), true},
		{"new VMI paused", kv(kvv1.VirtualMachineStatusPaused, false),
			ready(vmi("new", kvv1.Running, false), corev1.ConditionFalse, kvv1.GuestNotRunningReason), true},
		{"new VMI unschedulable", kv(kvv1.VirtualMachineStatusUnschedulable, false), vmi("new", kvv1.Scheduling, false), true},
		{"new VMI ended already", kv(kvv1.VirtualMachineStatusStarting, false), vmi("new", kvv1.Failed, false), true},
		{"policy changed to AlwaysOff, ended VMI still there", halted, vmi(old, kvv1.Succeeded, false), true},
		{"policy changed to AlwaysOff, start request never served", halted, nil, true},
		{"KubeVirt VM gone", nil, nil, true},
	}
	for _, c := range cases {
		if got := RestartDone(old, c.kv, c.vmi); got != c.want {
			t.Errorf("%s: RestartDone = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestStoppedByUser(t *testing.T) {
	vmi := func(deleting bool) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: "vmi-1"}, Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Succeeded}}
		if deleting {
			v.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		}
		return v
	}
	kv := func(rs kvv1.VirtualMachineRunStrategy, stopUID string) *kvv1.VirtualMachine {
		k := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(rs)}}
		if stopUID != "" {
			k.Status.StateChangeRequests = []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StopRequest, UID: ptr.To(types.UID(stopUID))}}
		}
		return k
	}
	cases := []struct {
		name string
		kv   *kvv1.VirtualMachine
		vmi  *kvv1.VirtualMachineInstance
		want bool
	}{
		// KubeVirt's Always strategy deletes an ended VMI itself, and the deletion may be seen before the end.
		{"Always: KubeVirt replacing an ended VMI is not a user's stop", kv(kvv1.RunStrategyAlways, ""), vmi(true), false},
		{"RerunOnFailure: same", kv(kvv1.RunStrategyRerunOnFailure, ""), vmi(true), false},
		{"Always: a Stop request for this VMI is", kv(kvv1.RunStrategyAlways, "vmi-1"), vmi(true), true},
		{"Manual: a deletion is a stop", kv(kvv1.RunStrategyManual, ""), vmi(true), true},
		{"Halted: a deletion is a stop", kv(kvv1.RunStrategyHalted, ""), vmi(true), true},
		{"Manual: a Stop request for another VMI is not", kv(kvv1.RunStrategyManual, "vmi-0"), vmi(false), false},
		{"Manual: ended by itself", kv(kvv1.RunStrategyManual, ""), vmi(false), false},
	}
	for _, c := range cases {
		if got := StoppedByUser(c.kv, c.vmi); got != c.want {
			t.Errorf("%s: StoppedByUser = %v, want %v", c.name, got, c.want)
		}
	}
}

// KubeVirt trims a Start request only once a VMI runs: when the VMI it started ended first, the request is stale,
// KubeVirt never serves it while the ended VMI is there, and virt-api refuses another start.
func TestPendingRestart(t *testing.T) {
	const ended = types.UID("vmi-2")
	kv := func(rs kvv1.VirtualMachineRunStrategy, reqs ...kvv1.VirtualMachineStateChangeRequest) *kvv1.VirtualMachine {
		return &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(rs)},
			Status: kvv1.VirtualMachineStatus{StateChangeRequests: reqs}}
	}
	start := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StartRequest}
	stop := func(uid types.UID) kvv1.VirtualMachineStateChangeRequest {
		return kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StopRequest, UID: ptr.To(uid)}
	}
	endedVMI := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: ended}, Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Succeeded}}
	for _, c := range []struct {
		name string
		kv   *kvv1.VirtualMachine
		want RestartNext
	}{
		{"nothing pending: send start", kv(kvv1.RunStrategyManual), RestartSend},
		{"virt-api's start of the ended VMI: virt-controller deletes it, wait", kv(kvv1.RunStrategyManual, stop(ended), start), RestartWait},
		{"runpolicy's own Start, or one older than the ended VMI: serve it", kv(kvv1.RunStrategyManual, start), RestartServeStale},
		{"a Stop for an older VMI with a Start: also stale", kv(kvv1.RunStrategyManual, stop("vmi-1"), start), RestartServeStale},
		{"not Manual: KubeVirt's strategy decides", kv(kvv1.RunStrategyAlways, start), RestartWait},
	} {
		if got := PendingRestart(c.kv, endedVMI, ended); got != c.want {
			t.Errorf("%s: PendingRestart = %d, want %d", c.name, got, c.want)
		}
	}
}

// What a recorded restart needs depends on the ended VMI still being there, as read past the cache.
func TestPendingRestartVMI(t *testing.T) {
	const ended = types.UID("vmi-2")
	kv := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual)}}
	vmi := func(uid types.UID, phase kvv1.VirtualMachineInstancePhase, deleting bool) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: uid}, Status: kvv1.VirtualMachineInstanceStatus{Phase: phase}}
		if deleting {
			v.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		}
		return v
	}
	for _, c := range []struct {
		name string
		kv   *kvv1.VirtualMachine
		vmi  *kvv1.VirtualMachineInstance
		want RestartNext
	}{
		{"the ended VMI is there, nothing pending: send", kv, vmi(ended, kvv1.Succeeded, false), RestartSend},
		{"the ended VMI is gone", kv, nil, RestartWait},
		{"the ended VMI is being deleted", kv, vmi(ended, kvv1.Succeeded, true), RestartWait},
		{"KubeVirt created the new VMI", kv, vmi("vmi-3", kvv1.Scheduling, false), RestartWait},
		{"the KubeVirt VM is gone", nil, vmi(ended, kvv1.Succeeded, false), RestartWait},
		{"virt-controller has not seen the VMI end: wait for it", kv, func() *kvv1.VirtualMachineInstance {
			v := vmi(ended, kvv1.Succeeded, false)
			v.Finalizers = []string{"example.com/other", kvv1.VirtualMachineControllerFinalizer}
			return v
		}(), RestartWait},
		{"virt-controller has seen it end, another finalizer stays: send", kv, func() *kvv1.VirtualMachineInstance {
			v := vmi(ended, kvv1.Succeeded, false)
			v.Finalizers = []string{"example.com/other"}
			return v
		}(), RestartSend},
	} {
		if got := PendingRestart(c.kv, c.vmi, ended); got != c.want {
			t.Errorf("%s: PendingRestart = %d, want %d", c.name, got, c.want)
		}
	}
}

// A Start without a Stop for the ended VMI is runpolicy's own restart request, or one KubeVirt kept from before the
// VMI; with the Stop it is virt-api's start of that very VMI.
func TestStaleStart(t *testing.T) {
	const ended = types.UID("vmi-2")
	start := kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StartRequest}
	stop := func(uid types.UID) kvv1.VirtualMachineStateChangeRequest {
		return kvv1.VirtualMachineStateChangeRequest{Action: kvv1.StopRequest, UID: ptr.To(uid)}
	}
	for _, c := range []struct {
		name string
		reqs []kvv1.VirtualMachineStateChangeRequest
		want bool
	}{
		{"none", nil, false},
		{"a Start alone", []kvv1.VirtualMachineStateChangeRequest{start}, true},
		{"a Stop for an older VMI, then a Start", []kvv1.VirtualMachineStateChangeRequest{stop("vmi-1"), start}, true},
		{"a restart of the ended VMI", []kvv1.VirtualMachineStateChangeRequest{stop(ended), start}, false},
		{"a Stop of the ended VMI alone", []kvv1.VirtualMachineStateChangeRequest{stop(ended)}, false},
	} {
		kv := &kvv1.VirtualMachine{Status: kvv1.VirtualMachineStatus{StateChangeRequests: c.reqs}}
		if got := StaleStart(kv, ended); got != c.want {
			t.Errorf("%s: StaleStart = %v, want %v", c.name, got, c.want)
		}
	}
}

// A VMI whose launcher pod KubeVirt reports terminating is about to end: its end is awaited for at most
// PodSettleTimeout from when the pod began terminating.
func TestEnding(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	vmi := func(phase kvv1.VirtualMachineInstancePhase, reason string, since time.Duration) *kvv1.VirtualMachineInstance {
		return &kvv1.VirtualMachineInstance{Status: kvv1.VirtualMachineInstanceStatus{Phase: phase,
			Conditions: []kvv1.VirtualMachineInstanceCondition{{Type: kvv1.VirtualMachineInstanceReady, Status: corev1.ConditionFalse,
				Reason: reason, LastTransitionTime: metav1.Time{Time: now.Add(-since)}}}}}
	}
	for _, c := range []struct {
		name string
		vmi  *kvv1.VirtualMachineInstance
		want time.Duration
	}{
		{"no VMI", nil, 0},
		{"running, pod terminating for 2s", vmi(kvv1.Running, kvv1.PodTerminatingReason, 2*time.Second), PodSettleTimeout - 2*time.Second},
		{"running, pod terminating for longer than the settle timeout", vmi(kvv1.Running, kvv1.PodTerminatingReason, PodSettleTimeout), 0},
		{"running, not ready for another reason", vmi(kvv1.Running, "ContainersNotReady", time.Second), 0},
		{"final already", vmi(kvv1.Succeeded, kvv1.PodTerminatingReason, time.Second), 0},
	} {
		if got := Ending(c.vmi, now); got != c.want {
			t.Errorf("%s: Ending = %s, want %s", c.name, got, c.want)
		}
	}
}
