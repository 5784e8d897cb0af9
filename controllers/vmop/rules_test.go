package vmop

import (
	"fmt"
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
	const migrate, evict = v1alpha1.OperationMigrate, v1alpha1.OperationEvict
	allowed := map[v1alpha1.RunPolicy][]v1alpha1.VirtualMachineOperationType{
		v1alpha1.RunPolicyAlwaysOff:                    nil,
		v1alpha1.RunPolicyAlwaysOn:                     {restart, migrate, evict},
		v1alpha1.RunPolicyManual:                       {start, stop, restart, migrate, evict},
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually: {start, stop, restart, migrate, evict},
	}
	for p, ok := range allowed {
		for _, op := range []v1alpha1.VirtualMachineOperationType{start, stop, restart, migrate, evict} {
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

// TestEviction: an Evict restarts a VMI KubeVirt cannot live-migrate only where the policy starts the VM again
// after such a stop, and is a Restart from the moment it chose to.
func TestEviction(t *testing.T) {
	for p, want := range map[v1alpha1.RunPolicy]bool{v1alpha1.RunPolicyAlwaysOn: true,
		v1alpha1.RunPolicyAlwaysOnUntilStoppedManually: true, v1alpha1.RunPolicyManual: false, v1alpha1.RunPolicyAlwaysOff: false} {
		got, msg := EvictByRestart("vm1", p, "InterfaceNotLiveMigratable: bridge")
		if got != want {
			t.Errorf("%s: restart allowed=%v, want %v", p, got, want)
		}
		if !got && (!strings.Contains(msg, "vm1") || !strings.Contains(msg, string(p)) || !strings.Contains(msg, "InterfaceNotLiveMigratable")) {
			t.Errorf("%s: message %q must name the VM, the policy and KubeVirt's reason", p, msg)
		}
	}
	op := &v1alpha1.VirtualMachineOperation{Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.OperationEvict}}
	for _, tc := range []struct {
		eviction *v1alpha1.OperationEviction
		want     v1alpha1.VirtualMachineOperationType
	}{
		{nil, v1alpha1.OperationMigrate},
		{&v1alpha1.OperationEviction{Method: v1alpha1.EvictionLiveMigration}, v1alpha1.OperationMigrate},
		{&v1alpha1.OperationEviction{Method: v1alpha1.EvictionRestart}, restart},
	} {
		op.Status.Eviction = tc.eviction
		if got := ActionOf(op); got != tc.want {
			t.Errorf("Evict with eviction %+v: ActionOf = %s, want %s", tc.eviction, got, tc.want)
		}
	}
	for _, typ := range []v1alpha1.VirtualMachineOperationType{start, stop, restart, v1alpha1.OperationMigrate} {
		o := &v1alpha1.VirtualMachineOperation{Spec: v1alpha1.VirtualMachineOperationSpec{Type: typ},
			Status: v1alpha1.VirtualMachineOperationStatus{Eviction: &v1alpha1.OperationEviction{Method: v1alpha1.EvictionRestart}}}
		if got := ActionOf(o); got != typ {
			t.Errorf("%s: ActionOf = %s, want its type", typ, got)
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
		op           v1alpha1.VirtualMachineOperationType
		force        bool
		phase        v1alpha1.VirtualMachinePhase
		vmi          VMIState
		startPending bool
		want         Verdict
	}{
		{start, false, stopped, VMINone, false, Run},
		{start, false, stopped, VMIFinal, false, Run},
		{start, false, pendingP, VMINone, false, Run},
		{start, false, running, VMIActive, false, Refuse},
		{start, false, starting, VMIActive, false, Refuse},
		{start, false, stopping, VMIDeleting, false, Wait},
		{start, false, stopping, VMINone, false, Wait}, // the VM's phase lags the VMI
		{start, false, running, VMINone, false, Wait},
		{start, false, deleting, VMINone, false, Refuse},
		{stop, false, running, VMIActive, false, Run},
		{stop, false, starting, VMIActive, false, Run},
		{stop, true, running, VMIActive, false, Run},
		{stop, false, stopping, VMIDeleting, false, Refuse},
		{stop, true, stopping, VMIDeleting, false, Run},
		{stop, false, stopped, VMINone, false, Refuse},
		{stop, true, stopped, VMIFinal, false, Refuse},
		{stop, false, deleting, VMIActive, false, Refuse},
		// runpolicy restarting after a guest reboot: the restart is recorded (phase Starting) but not sent yet, or
		// the new VMI not seen yet. The Stop waits for it rather than be refused and let the restart win.
		{stop, false, starting, VMIFinal, false, Wait},
		{stop, true, starting, VMINone, false, Wait},
		{restart, false, running, VMIActive, false, Run},
		{restart, true, running, VMIActive, false, Run},
		{restart, false, stopped, VMINone, false, Refuse},
		{restart, true, stopping, VMIDeleting, false, Refuse},
		{restart, false, stopped, VMIFinal, false, Refuse},
		// A Start request pending (a Restart's or a Start's): a Stop runs to remove it, whatever the VMI.
		{stop, false, stopped, VMINone, true, Run},
		{stop, true, pendingP, VMINone, true, Run},
		{stop, false, stopped, VMIFinal, true, Run},
		{stop, false, stopping, VMIDeleting, true, Run},
		{restart, false, stopping, VMIDeleting, true, Refuse},
		{start, false, pendingP, VMINone, true, Run},
	} {
		got, msg := PhaseAllows("vm1", v1alpha1.RunPolicyManual, tc.phase, tc.vmi, tc.startPending, tc.op, tc.force)
		if got != tc.want {
			t.Errorf("%s force=%v in %s/%s start pending=%v: %s, want %s (%s)", tc.op, tc.force, tc.phase, tc.vmi, tc.startPending, got, tc.want, msg)
		}
		if got != Run && (!strings.Contains(msg, "vm1") || !strings.Contains(msg, "Manual")) {
			t.Errorf("%s in %s/%s: message %q must name the VM and the policy", tc.op, tc.phase, tc.vmi, msg)
		}
	}
}

func inProgress(o Op) Op {
	o.InProgress = true
	return o
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
		{"a newer one in progress (same second, reconciled first) is waited for", "a",
			[]Op{op("a", 0, start, false, false), inProgress(op("b", 0, stop, false, false))}, Turn{WaitFor: "b"}},
		{"a forced Stop does not supersede a newer one in progress", "a",
			[]Op{op("a", 0, stop, true, false), inProgress(op("b", 0, restart, false, false))}, Turn{WaitFor: "b"}},
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

func TestSignalActionAndDone(t *testing.T) {
	const old, fresh = types.UID("old"), types.UID("new")
	for _, tc := range []struct {
		name      string
		op        v1alpha1.VirtualMachineOperationType
		force     bool
		target    types.UID
		view      KubeVirtView
		action    Action
		completed bool
	}{
		{"start, nothing happened yet", start, false, "", KubeVirtView{VMI: VMINone}, Send, false},
		{"start, request pending", start, false, "", KubeVirtView{VMI: VMINone, StartRequested: true}, Taken, false},
		{"start from an ended VMI, stop+start pending", start, false, old,
			KubeVirtView{VMI: VMIFinal, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true}, Taken, false},
		{"start, a stop request left over for the ended VMI", start, false, old,
			KubeVirtView{VMI: VMIFinal, VMIUID: old, StopRequestedFor: []types.UID{old}}, Send, false},
		{"start, new VMI scheduling", start, false, "", KubeVirtView{VMI: VMIActive, VMIUID: fresh}, Taken, false},
		{"start, new VMI running", start, false, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, Taken, true},
		{"start, the ended VMI is still there", start, false, old, KubeVirtView{VMI: VMIFinal, VMIUID: old}, Send, false},

		{"stop, VMI still running", stop, false, old, KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true}, Send, false},
		{"stop, stop request pending", stop, false, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{old}}, Taken, false},
		{"stop, VMI being deleted", stop, false, old, KubeVirtView{VMI: VMIDeleting, VMIUID: old}, Taken, false},
		{"stop, VMI ended", stop, false, old, KubeVirtView{VMI: VMIFinal, VMIUID: old}, Taken, true},
		{"stop, VMI gone", stop, false, old, KubeVirtView{VMI: VMINone}, Taken, true},
		{"stop, a stop request for another VMI", stop, false, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{"other"}}, Send, false},
		{"stop, the VMI was replaced: stop the new one", stop, false, old,
			KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, Send, false},
		{"stop, a restart's [Stop, Start] is not the Stop's: drop the Start", stop, false, old,
			KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true}, DropStart, false},
		{"stop, VMI gone but a Start pending: not stopped", stop, false, old,
			KubeVirtView{VMI: VMINone, StartRequested: true}, DropStart, false},
		{"stop, VMI ended but a Start pending: not stopped", stop, false, old,
			KubeVirtView{VMI: VMIFinal, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true}, DropStart, false},
		{"forced stop, its own stop (grace period 0) pending", stop, true, old,
			KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}, VMIGraceZero: true}, Taken, false},
		{"forced stop, a graceful stop under way is not its signal", stop, true, old,
			KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}}, Send, false},
		{"forced stop, a stop request without grace period 0 is not its signal", stop, true, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{old}}, Send, false},
		{"forced stop, VMI gone", stop, true, old, KubeVirtView{VMI: VMINone}, Taken, true},

		{"restart, nothing happened yet", restart, false, old, KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true}, Send, false},
		{"restart, [Stop, Start] pending", restart, false, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{old}, StartRequested: true}, Taken, false},
		{"restart, old VMI going, Start pending", restart, false, old,
			KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true}, Taken, false},
		{"restart, no VMI between the two, Start pending", restart, false, old, KubeVirtView{VMI: VMINone, StartRequested: true}, Taken, false},
		{"restart, a Stop's request is not the Restart's", restart, false, old,
			KubeVirtView{VMI: VMIActive, VMIUID: old, VMIRunning: true, StopRequestedFor: []types.UID{old}}, Send, false},
		{"restart, a Stop's deletion is not the Restart's", restart, false, old, KubeVirtView{VMI: VMIDeleting, VMIUID: old}, Send, false},
		{"restart, new VMI not yet running", restart, false, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh}, Taken, false},
		{"restart, new VMI running", restart, false, old, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, Taken, true},
	} {
		if got := SignalAction(tc.op, tc.force, tc.target, tc.view); got != tc.action {
			t.Errorf("%s: SignalAction=%v, want %v", tc.name, got, tc.action)
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

// kind is an operation type with its force flag: the five kinds of the operation table.
type kind struct {
	t     v1alpha1.VirtualMachineOperationType
	force bool
}

func (k kind) String() string {
	if k.force {
		return "forced " + string(k.t)
	}
	return string(k.t)
}

var kinds = []kind{{start, false}, {stop, false}, {stop, true}, {restart, false}, {restart, true}}

// TestOperationPairs takes every kind of operation created while every kind of operation is in flight (KubeVirt
// accepted its signal, it has not finished) and follows the rules: the newer one waits for the older, or — a forced
// Stop over one that is not forced — supersedes it and acts on what the older one's signal left in KubeVirt: it
// removes a pending Start and sends its own stop, and counts as done only once the VM is stopped with no Start
// pending. The KubeVirt views are those a held operation shows (the controller test of the same pairs holds them
// with real KubeVirt).
func TestOperationPairs(t *testing.T) {
	const old, fresh = types.UID("old"), types.UID("new")
	// inFlight is what KubeVirt shows while an operation of that kind is under way, and after it finished.
	inFlight := map[kind]struct{ during, after KubeVirtView }{
		{start, false}: {KubeVirtView{VMI: VMINone, StartRequested: true}, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}},
		{stop, false}:  {KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}}, KubeVirtView{VMI: VMINone}},
		{stop, true}: {KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}, VMIGraceZero: true},
			KubeVirtView{VMI: VMINone}},
		{restart, false}: {KubeVirtView{VMI: VMIDeleting, VMIUID: old, StopRequestedFor: []types.UID{old}, StartRequested: true},
			KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}},
		{restart, true}: {KubeVirtView{VMI: VMINone, StartRequested: true}, KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}},
	}
	phaseOf := func(v KubeVirtView) v1alpha1.VirtualMachinePhase {
		switch v.VMI {
		case VMIActive:
			return v1alpha1.VirtualMachineRunning
		case VMIDeleting:
			return v1alpha1.VirtualMachineStopping
		default:
			return v1alpha1.VirtualMachineStopped
		}
	}
	// want: what the newer operation does. "wait, then Run|Refuse" once the older one finished; for a forced
	// Stop that supersedes it, the actions it takes in turn from the in-flight view.
	type outcome struct {
		superseded bool
		after      Verdict  // when it waited: its verdict once the older one finished
		actions    []Action // when it superseded: its passes until it sends or records
	}
	want := map[[2]kind]outcome{
		{{start, false}, {start, false}}:     {after: Refuse},
		{{start, false}, {stop, false}}:      {after: Run},
		{{start, false}, {stop, true}}:       {superseded: true, actions: []Action{DropStart, Taken}},
		{{start, false}, {restart, false}}:   {after: Run},
		{{start, false}, {restart, true}}:    {after: Run},
		{{stop, false}, {start, false}}:      {after: Run},
		{{stop, false}, {stop, false}}:       {after: Refuse},
		{{stop, false}, {stop, true}}:        {superseded: true, actions: []Action{Send}},
		{{stop, false}, {restart, false}}:    {after: Refuse},
		{{stop, false}, {restart, true}}:     {after: Refuse},
		{{stop, true}, {start, false}}:       {after: Run},
		{{stop, true}, {stop, false}}:        {after: Refuse},
		{{stop, true}, {stop, true}}:         {after: Refuse},
		{{stop, true}, {restart, false}}:     {after: Refuse},
		{{stop, true}, {restart, true}}:      {after: Refuse},
		{{restart, false}, {start, false}}:   {after: Refuse},
		{{restart, false}, {stop, false}}:    {after: Run},
		{{restart, false}, {stop, true}}:     {superseded: true, actions: []Action{DropStart, Send}},
		{{restart, false}, {restart, false}}: {after: Run},
		{{restart, false}, {restart, true}}:  {after: Run},
		{{restart, true}, {start, false}}:    {after: Refuse},
		{{restart, true}, {stop, false}}:     {after: Run},
		{{restart, true}, {stop, true}}:      {after: Run}, // nothing supersedes a forced Restart
		{{restart, true}, {restart, false}}:  {after: Run},
		{{restart, true}, {restart, true}}:   {after: Run},
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, first := range kinds {
		for _, second := range kinds {
			name := fmt.Sprintf("%s while a %s is in flight", second, first)
			w, ok := want[[2]kind{first, second}]
			if !ok {
				t.Fatalf("%s: no expectation", name)
			}
			a := Op{Name: "a", Created: t0, Type: first.t, Force: first.force, InProgress: true}
			b := Op{Name: "b", Created: t0.Add(time.Second), Type: second.t, Force: second.force}
			ops := []Op{a, b}
			v := inFlight[first]

			if w.superseded {
				if got := Queue(a, ops); got.SupersededBy != "b" {
					t.Errorf("%s: the older one's turn is %+v, want superseded by b", name, got)
				}
				if got := Queue(b, ops); got != (Turn{}) {
					t.Errorf("%s: %+v, want its turn at once", name, got)
				}
				during := v.during
				during.StopRequestedFor = slices.Clone(during.StopRequestedFor)
				if got, msg := PhaseAllows("vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, phaseOf(during), during.VMI,
					during.StartRequested, second.t, second.force); got != Run {
					t.Errorf("%s: %s (%s), want Run", name, got, msg)
					continue
				}
				target := during.VMIUID // recorded before the signal
				var acts []Action
				for range 3 {
					act := SignalAction(second.t, second.force, target, during)
					acts = append(acts, act)
					if act != DropStart {
						break
					}
					during.StartRequested = false // the JSON patch removed it
				}
				if !slices.Equal(acts, w.actions) {
					t.Errorf("%s: actions %v, want %v", name, acts, w.actions)
				}
				if acts[len(acts)-1] == Send {
					// Its own stop ended the VMI: nothing pending, nothing running.
					during = KubeVirtView{VMI: VMINone}
				}
				if !Done(second.t, target, during) {
					t.Errorf("%s: not done once stopped with no Start pending (%+v)", name, during)
				}
				if Done(second.t, target, v.during) {
					t.Errorf("%s: done while the in-flight one's requests are pending (%+v)", name, v.during)
				}
				continue
			}

			if got := Queue(b, ops); got.WaitFor != "a" {
				t.Errorf("%s: %+v, want to wait for a", name, got)
			}
			if got := Queue(a, ops); got != (Turn{}) {
				t.Errorf("%s: the older one's turn is %+v, want it to go on", name, got)
			}
			after := v.after
			got, msg := PhaseAllows("vm1", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, phaseOf(after), after.VMI,
				after.StartRequested, second.t, second.force)
			if got != w.after {
				t.Errorf("%s: once it finished, %s (%s), want %s", name, got, msg, w.after)
			}
			if got == Run {
				if act := SignalAction(second.t, second.force, after.VMIUID, after); act != Send {
					t.Errorf("%s: once it finished, %s, want Send: another operation's signal is not its own", name, act)
				}
			}
		}
	}
}

// A Stop in progress stops a VMI that appeared after its signal and that nothing stops yet.
func TestOvertaken(t *testing.T) {
	const target, fresh = types.UID("old"), types.UID("new")
	for _, tc := range []struct {
		name string
		view KubeVirtView
		want bool
	}{
		{"a new VMI runs, nothing stops it", KubeVirtView{VMI: VMIActive, VMIUID: fresh, VMIRunning: true}, true},
		{"a new VMI schedules, nothing stops it", KubeVirtView{VMI: VMIActive, VMIUID: fresh}, true},
		{"the target still stopping", KubeVirtView{VMI: VMIActive, VMIUID: target, StopRequestedFor: []types.UID{target}}, false},
		{"the target, no stop shows (the signal's own pass decides)", KubeVirtView{VMI: VMIActive, VMIUID: target}, false},
		{"a new VMI with a Stop request for it", KubeVirtView{VMI: VMIActive, VMIUID: fresh, StopRequestedFor: []types.UID{fresh}}, false},
		{"a new VMI being deleted", KubeVirtView{VMI: VMIDeleting, VMIUID: fresh}, false},
		{"a new VMI ended", KubeVirtView{VMI: VMIFinal, VMIUID: fresh}, false},
		{"a Start pending: removed first", KubeVirtView{VMI: VMIActive, VMIUID: fresh, StartRequested: true}, false},
		{"no VMI", KubeVirtView{VMI: VMINone}, false},
	} {
		if got := Overtaken(target, tc.view); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
