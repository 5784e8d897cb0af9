package vmop

import (
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

const (
	start   = v1alpha1.OperationStart
	stop    = v1alpha1.OperationStop
	restart = v1alpha1.OperationRestart
)

func TestPolicyAllows(t *testing.T) {
	allowed := map[v1alpha1.RunPolicy][]v1alpha1.VirtualMachineOperationType{
		v1alpha1.RunPolicyAlwaysOff:                    nil,
		v1alpha1.RunPolicyAlwaysOn:                     {restart},
		v1alpha1.RunPolicyManual:                       {start, stop, restart},
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually: {start, stop, restart},
	}
	for p, ok := range allowed {
		for _, op := range []v1alpha1.VirtualMachineOperationType{start, stop, restart} {
			got, msg := PolicyAllows("vm1", p, op)
			if want := slices.Contains(ok, op); got != want {
				t.Errorf("%s %s: allowed=%v, want %v", p, op, got, want)
			}
			if !got && (!strings.Contains(msg, "vm1") || !strings.Contains(msg, string(p)) || !strings.Contains(msg, "runPolicy")) {
				t.Errorf("%s %s: message %q must name the VM, the policy and what to do instead", p, op, msg)
			}
		}
	}
}

func TestPhaseAllows(t *testing.T) {
	const (
		running  = v1alpha1.VirtualMachineRunning
		starting = v1alpha1.VirtualMachineStarting
		stopping = v1alpha1.VirtualMachineStopping
		stopped  = v1alpha1.VirtualMachineStopped
		pendingP = v1alpha1.VirtualMachinePending
		deleting = v1alpha1.VirtualMachineTerminating
	)
	for _, tc := range []struct {
		op    v1alpha1.VirtualMachineOperationType
		force bool
		phase v1alpha1.VirtualMachinePhase
		vmi   VMIState
		want  Verdict
	}{
		{start, false, stopped, VMINone, Run},
		{start, false, stopped, VMIFinal, Run},
		{start, false, pendingP, VMINone, Run},
		{start, false, running, VMIActive, Refuse},
		{start, false, starting, VMIActive, Refuse},
		{start, false, stopping, VMIDeleting, Wait},
		{start, false, stopping, VMINone, Wait}, // the VM's phase lags the VMI
		{start, false, running, VMINone, Wait},
		{start, false, deleting, VMINone, Refuse},
		{stop, false, running, VMIActive, Run},
		{stop, false, starting, VMIActive, Run},
		{stop, true, running, VMIActive, Run},
		{stop, false, stopping, VMIDeleting, Refuse},
		{stop, true, stopping, VMIDeleting, Run},
		{stop, false, stopped, VMINone, Refuse},
		{stop, true, stopped, VMIFinal, Refuse},
		{stop, false, deleting, VMIActive, Refuse},
		{restart, false, running, VMIActive, Run},
		{restart, true, running, VMIActive, Run},
		{restart, false, stopped, VMINone, Refuse},
		{restart, true, stopping, VMIDeleting, Refuse},
		{restart, false, stopped, VMIFinal, Refuse},
	} {
		got, msg := PhaseAllows("vm1", v1alpha1.RunPolicyManual, tc.phase, tc.vmi, tc.op, tc.force)
		if got != tc.want {
			t.Errorf("%s force=%v in %s/%s: %s, want %s (%s)", tc.op, tc.force, tc.phase, tc.vmi, got, tc.want, msg)
		}
		if got != Run && (!strings.Contains(msg, "vm1") || !strings.Contains(msg, "Manual")) {
			t.Errorf("%s in %s/%s: message %q must name the VM and the policy", tc.op, tc.phase, tc.vmi, msg)
		}
	}
}

func TestQueue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	op := func(name string, sec int, typ v1alpha1.VirtualMachineOperationType, force, finished bool) Op {
		return Op{Name: name, Created: t0.Add(time.Duration(sec) * time.Second), Type: typ, Force: force, Finished: finished}
	}
	for _, tc := range []struct {
		name string
		self string
		ops  []Op
		want Turn
	}{
		{"alone", "a", []Op{op("a", 0, start, false, false)}, Turn{}},
		{"older finished ones do not count", "b",
			[]Op{op("a", 0, start, false, true), op("b", 1, stop, false, false)}, Turn{}},
		{"a newer one waits for the older", "b",
			[]Op{op("a", 0, start, false, false), op("b", 1, stop, false, false)}, Turn{WaitFor: "a"}},
		{"the older one goes first", "a",
			[]Op{op("a", 0, start, false, false), op("b", 1, restart, false, false)}, Turn{}},
		{"same second: by name", "b",
			[]Op{op("b", 0, stop, false, false), op("a", 0, start, false, false)}, Turn{WaitFor: "a"}},
		{"a forced Stop supersedes a Start", "a",
			[]Op{op("a", 0, start, false, false), op("f", 1, stop, true, false)}, Turn{SupersededBy: "f"}},
		{"a forced Stop supersedes a Restart and a graceful Stop", "r",
			[]Op{op("r", 0, restart, false, false), op("s", 1, stop, false, false), op("f", 2, stop, true, false)}, Turn{SupersededBy: "f"}},
		{"the forced Stop does not wait for what it supersedes", "f",
			[]Op{op("r", 0, restart, false, false), op("s", 1, stop, false, false), op("f", 2, stop, true, false)}, Turn{}},
		{"nothing supersedes a forced Restart", "r",
			[]Op{op("r", 0, restart, true, false), op("f", 1, stop, true, false)}, Turn{}},
		{"a forced Stop waits for a forced Restart", "f",
			[]Op{op("r", 0, restart, true, false), op("f", 1, stop, true, false)}, Turn{WaitFor: "r"}},
		{"a graceful Stop supersedes nothing", "a",
			[]Op{op("a", 0, start, false, false), op("s", 1, stop, false, false)}, Turn{}},
		{"an older forced Stop does not supersede a newer Start", "b",
			[]Op{op("f", 0, stop, true, false), op("b", 1, start, false, false)}, Turn{WaitFor: "f"}},
		{"behind a superseded one, wait for the forced Stop", "b",
			[]Op{op("a", 0, start, false, false), op("f", 1, stop, true, false), op("b", 2, start, false, false)}, Turn{WaitFor: "f"}},
		{"a finished forced Stop supersedes nothing", "a",
			[]Op{op("a", 0, start, false, false), op("f", 1, stop, true, true)}, Turn{}},
	} {
		var self Op
		for _, o := range tc.ops {
			if o.Name == tc.self {
				self = o
			}
		}
		if got := Queue(self, tc.ops); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestSignalTakenAndDone(t *testing.T) {
	const old, fresh = types.UID("old"), types.UID("new")
	for _, tc := range []struct {
		name      string
		op        v1alpha1.VirtualMachineOperationType
		target    types.UID
		view      KubeVirtView
		taken     bool
		completed bool
	}{
		{"start, nothing happened yet", start, "", KubeVirtView{VMI: VMINone}, false, false},
		{"start, request pending", start, "", KubeVirtView{VMI: VMINone, StartRequested: true}, true, false},
		{"start from an ended VMI, stop+start pending", start, old,
			KubeVirtView{VMI: VMIFinal, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true}, true, false},
		{"start, a stop request left over for the ended VMI", start, old,
			KubeVirtView{VMI: VMIFinal, VMIUID: old, StopRequestedFor: []types.UID{old}}, false, false},
		{"start, new VMI scheduling", start, "", KubeVirtView{VMI: VMIActive, VMIUID: fresh}, true, false},
		{"start, new VMI running", start, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, true, true},
		{"start, the ended VMI is still there", start, old, KubeVirtView{VMI: VMIFinal, VMIUID: old}, false, false},
		{"stop, VMI still running", stop, old, KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true}, false, false},
		{"stop, stop request pending", stop, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{old}}, true, false},
		{"stop, VMI being deleted", stop, old, KubeVirtView{VMI: VMIDeleting, VMIUID: old}, true, false},
		{"stop, VMI ended", stop, old, KubeVirtView{VMI: VMIFinal, VMIUID: old}, true, true},
		{"stop, VMI gone", stop, old, KubeVirtView{VMI: VMINone}, true, true},
		{"stop, a stop request for another VMI", stop, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{"other"}}, false, false},
		{"restart, nothing happened yet", restart, old, KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true}, false, false},
		{"restart, old VMI going", restart, old, KubeVirtView{VMI: VMIDeleting, VMIUID: old}, true, false},
		{"restart, no VMI between the two", restart, old, KubeVirtView{VMI: VMINone}, true, false},
		{"restart, new VMI not yet running", restart, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh}, true, false},
		{"restart, new VMI running", restart, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, true, true},
	} {
		if got := SignalTaken(tc.op, tc.target, tc.view); got != tc.taken {
			t.Errorf("%s: SignalTaken=%v, want %v", tc.name, got, tc.taken)
		}
		if got := Done(tc.op, tc.target, tc.view); got != tc.completed {
			t.Errorf("%s: Done=%v, want %v", tc.name, got, tc.completed)
		}
	}
}

func TestCollect(t *testing.T) {
	now := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	ops := []Finish{
		{"a", now.Add(-25 * time.Hour)},
		{"b", now.Add(-3 * time.Hour)},
		{"c", now.Add(-2 * time.Hour)},
		{"d", now.Add(-1 * time.Hour)},
	}
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		max  int
		want []string
	}{
		{"keep everything", 0, 0, nil},
		{"ttl", 24 * time.Hour, 0, []string{"a"}},
		{"max", 0, 2, []string{"b", "a"}},
		{"both", 24 * time.Hour, 3, []string{"a"}},
		{"short ttl", 90 * time.Minute, 10, []string{"c", "b", "a"}},
	} {
		if got := Collect(ops, now, tc.ttl, tc.max); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
