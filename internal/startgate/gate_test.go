package startgate

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

var t0 = time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)

func key(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

// testGate is a primed, warm gate of max slots whose clock the test moves; woken receives what it enqueues.
func testGate(t *testing.T, max int) (*Gate, *time.Time, chan types.NamespacedName) {
	t.Helper()
	now := t0
	woken := make(chan types.NamespacedName, 100)
	g := &Gate{Max: max, Clock: func() time.Time { return now }, Enqueue: func(k types.NamespacedName) { woken <- k }}
	g.Prime(nil)
	return g, &now, woken
}

func wantGranted(t *testing.T, g *Gate, name string, tk Ticket) {
	t.Helper()
	if v := g.Ask(key(name), tk); !v.Granted {
		t.Fatalf("%s: not granted: %+v", name, v)
	}
}

func wantPlace(t *testing.T, g *Gate, name string, tk Ticket, place int) {
	t.Helper()
	v := g.Ask(key(name), tk)
	if v.Granted || v.Place != place {
		t.Fatalf("%s: want place %d, got %+v", name, place, v)
	}
}

// testGateWithOps is testGate of one slot whose operations' wake-ups go to wokenOps.
func testGateWithOps(t *testing.T) (*Gate, chan types.NamespacedName, chan types.NamespacedName) {
	t.Helper()
	g, _, woken := testGate(t, 1)
	wokenOps := make(chan types.NamespacedName, 100)
	g.EnqueueOp = func(k types.NamespacedName) { wokenOps <- k }
	return g, woken, wokenOps
}

// drain returns the keys enqueued until none came for a moment.
func drain(woken chan types.NamespacedName) map[string]bool {
	got := map[string]bool{}
	for {
		select {
		case k := <-woken:
			got[k.Name] = true
		case <-time.After(100 * time.Millisecond):
			return got
		}
	}
}

func TestNoCapGrantsEverything(t *testing.T) {
	var nilGate *Gate
	for _, g := range []*Gate{nilGate, {}} {
		for i := range 3 {
			if v := g.Ask(key("vm"), Ticket{Order: int32(i)}); !v.Granted {
				t.Fatalf("gate %+v refused without a cap: %+v", g, v)
			}
		}
		g.Observe(key("vm"), Starting, true) // no bookkeeping, no panic on a nil gate
	}
}

func TestCapAndOrder(t *testing.T) {
	g, _, woken := testGate(t, 2)
	wantGranted(t, g, "a", Ticket{Order: 5, Since: t0})
	wantGranted(t, g, "b", Ticket{Order: 5, Since: t0})
	wantPlace(t, g, "late", Ticket{Order: 9, Since: t0}, 1)
	wantPlace(t, g, "low", Ticket{Order: 1, Since: t0.Add(time.Hour)}, 1) // lower startOrder goes ahead
	wantPlace(t, g, "late", Ticket{Order: 9, Since: t0}, 2)
	wantPlace(t, g, "reboot", Ticket{Restart: true, Order: 100, Since: t0.Add(2 * time.Hour)}, 1) // restarts first
	wantPlace(t, g, "late", Ticket{Order: 9, Since: t0}, 3)

	// a runs: its slot goes to the first in the queue, which is woken; the others still wait.
	g.Observe(key("a"), Running, false)
	if got := drain(woken); len(got) != 1 || !got["reboot"] {
		t.Fatalf("woken %v, want only reboot", got)
	}
	wantPlace(t, g, "low", Ticket{Order: 1, Since: t0.Add(time.Hour)}, 2) // not its turn: reboot is ahead
	wantGranted(t, g, "reboot", Ticket{Restart: true, Order: 100, Since: t0.Add(2 * time.Hour)})
	wantPlace(t, g, "low", Ticket{Order: 1, Since: t0.Add(time.Hour)}, 1)
}

func TestSinceAndNameBreakTies(t *testing.T) {
	g, _, _ := testGate(t, 1)
	wantGranted(t, g, "holder", Ticket{})
	wantPlace(t, g, "newer", Ticket{Since: t0.Add(time.Minute)}, 1)
	wantPlace(t, g, "older", Ticket{Since: t0}, 1)
	wantPlace(t, g, "x2", Ticket{Since: t0.Add(time.Second)}, 2)
	wantPlace(t, g, "x1", Ticket{Since: t0.Add(time.Second)}, 2) // the same Since: by name
	wantPlace(t, g, "x2", Ticket{Since: t0.Add(time.Second)}, 3)
	wantPlace(t, g, "newer", Ticket{Since: t0.Add(time.Minute)}, 4)
}

func TestSlotLifecycle(t *testing.T) {
	g, now, _ := testGate(t, 1)
	wantGranted(t, g, "a", Ticket{})
	wantPlace(t, g, "b", Ticket{}, 1)

	// The pass right after the grant still sees the VM stopped (the cache lags): the slot stays taken.
	g.Observe(key("a"), Idle, false)
	wantPlace(t, g, "b", Ticket{}, 1)
	g.Observe(key("a"), Starting, false)
	wantPlace(t, g, "b", Ticket{}, 1)
	// Seen starting, then no longer (its VMI failed to start, say): the slot is given back.
	g.Observe(key("a"), Idle, false)
	wantGranted(t, g, "b", Ticket{})

	// A VM never seen starting gives its slot back after Timeout.
	wantPlace(t, g, "c", Ticket{}, 1)
	*now = now.Add(DefaultTimeout - time.Second)
	wantPlace(t, g, "c", Ticket{}, 1)
	*now = now.Add(time.Second)
	wantGranted(t, g, "c", Ticket{})

	// A deleted VM gives its slot back.
	wantPlace(t, g, "d", Ticket{}, 1)
	g.Forget(key("c"))
	wantGranted(t, g, "d", Ticket{})
}

func TestStartsOutsideTheGateTakeSlots(t *testing.T) {
	g, _, woken := testGate(t, 1)
	// KubeVirt restarts an AlwaysOn VM by itself: seen starting, it takes the slot.
	g.Observe(key("kubevirt-restarted"), Starting, false)
	wantPlace(t, g, "a", Ticket{}, 1)
	g.Observe(key("kubevirt-restarted"), Running, false)
	if got := drain(woken); !got["a"] {
		t.Fatalf("woken %v, want a", got)
	}
	wantGranted(t, g, "a", Ticket{})
}

func TestAVMThatNoLongerAsksLeavesTheQueue(t *testing.T) {
	g, _, _ := testGate(t, 1)
	wantGranted(t, g, "a", Ticket{})
	wantPlace(t, g, "b", Ticket{Order: 1}, 1)
	wantPlace(t, g, "c", Ticket{Order: 2}, 2)
	g.Observe(key("b"), Idle, false) // its policy changed to AlwaysOff
	wantPlace(t, g, "c", Ticket{Order: 2}, 1)
}

func TestWarmUpWaitsForEveryPrimedVM(t *testing.T) {
	now := t0
	g := &Gate{Max: 1, Clock: func() time.Time { return now }}
	g.Observe(key("looked-before"), Idle, false) // a pass before the first Ask
	g.Prime([]types.NamespacedName{key("high"), key("low"), key("stopped"), key("looked-before")})
	// The first VM reconciled after the start wants to start: it waits until every VM was looked at.
	v := g.Ask(key("high"), Ticket{Order: 10})
	if v.Granted || !v.WarmingUp {
		t.Fatalf("granted during the warm-up: %+v", v)
	}
	wantPlace(t, g, "low", Ticket{Order: 1}, 1)
	g.Observe(key("stopped"), Idle, false)
	// Every VM was looked at: the lowest startOrder gets the slot, not the first that asked.
	wantPlace(t, g, "high", Ticket{Order: 10}, 2)
	wantGranted(t, g, "low", Ticket{Order: 1})

	// A VM the reconciler never looks at ends the warm-up after WarmUp.
	now = t0
	g = &Gate{Max: 1, Clock: func() time.Time { return now }}
	g.Prime([]types.NamespacedName{key("a"), key("never")})
	if v := g.Ask(key("a"), Ticket{}); v.Granted {
		t.Fatalf("granted during the warm-up: %+v", v)
	}
	now = now.Add(WarmUp)
	wantGranted(t, g, "a", Ticket{})
}

// A waiting VM is told which VMs hold the slots: the first ShownHolders by namespace and name.
func TestHolders(t *testing.T) {
	g, _, _ := testGate(t, 4)
	for _, n := range []string{"d", "b", "c"} {
		wantGranted(t, g, n, Ticket{})
	}
	g.Observe(types.NamespacedName{Namespace: "aa", Name: "z"}, Starting, false) // started without the gate
	v := g.Ask(key("late"), Ticket{})
	if v.Granted || v.InUse != 4 {
		t.Fatalf("want waiting with 4 slots in use, got %+v", v)
	}
	want := []types.NamespacedName{{Namespace: "aa", Name: "z"}, key("b"), key("c")}
	if len(v.Holders) != len(want) {
		t.Fatalf("holders %v, want %v", v.Holders, want)
	}
	for i := range want {
		if v.Holders[i] != want[i] {
			t.Fatalf("holders %v, want %v", v.Holders, want)
		}
	}
	if v := g.Ask(key("d"), Ticket{}); !v.Granted || v.Holders != nil {
		t.Fatalf("a granted verdict names no holders: %+v", v)
	}
}

// An operation's ticket survives the VM controller's passes over its VM, and its turn wakes the operation.
func TestOperationsWaitTheirTurn(t *testing.T) {
	g, woken, wokenOps := testGateWithOps(t)
	wantGranted(t, g, "holder", Ticket{})
	start := Ticket{Since: t0, Op: "start-1"}
	wantPlace(t, g, "vm", start, 1)
	wantPlace(t, g, "other", Ticket{Since: t0.Add(time.Minute)}, 2) // a first start created after the operation
	g.Observe(key("vm"), Idle, false)                               // the VM controller's pass over the stopped VM
	wantPlace(t, g, "other", Ticket{Since: t0.Add(time.Minute)}, 2)

	g.Observe(key("holder"), Running, false)
	if got := drain(wokenOps); len(got) != 1 || !got["start-1"] {
		t.Fatalf("operations woken %v, want start-1", got)
	}
	if got := drain(woken); len(got) != 0 {
		t.Fatalf("VMs woken %v, want none: the operation's turn came", got)
	}
	wantGranted(t, g, "vm", start)
	wantPlace(t, g, "other", Ticket{Since: t0.Add(time.Minute)}, 1)
	g.Observe(key("vm"), Starting, false)
	g.Observe(key("vm"), Running, false)
	wantGranted(t, g, "other", Ticket{Since: t0.Add(time.Minute)})
}

// A Restart operation is granted while its VM still runs: the slot waits for the start to come.
func TestRestartOperationHoldsItsSlotUntilTheStart(t *testing.T) {
	g, _, _ := testGateWithOps(t)
	wantGranted(t, g, "vm", Ticket{Op: "restart-1"})
	g.Observe(key("vm"), Running, false) // the old VMI, before KubeVirt took the restart
	wantPlace(t, g, "b", Ticket{}, 1)
	g.Observe(key("vm"), Idle, false) // stopping
	g.Observe(key("vm"), Starting, false)
	wantPlace(t, g, "b", Ticket{}, 1)
	g.Observe(key("vm"), Running, false)
	wantGranted(t, g, "b", Ticket{})
}

// An operation that no longer heads for its signal gives back its place, and a slot its VM has not used; a slot
// whose VM was seen starting stays until the VM runs.
func TestWithdraw(t *testing.T) {
	g, _, _ := testGateWithOps(t)
	op := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }
	wantGranted(t, g, "a", Ticket{Op: "start-a"})
	wantPlace(t, g, "b", Ticket{Since: t0, Op: "start-b"}, 1)
	wantPlace(t, g, "c", Ticket{Since: t0.Add(time.Minute)}, 2)
	g.Withdraw(op("start-b")) // failed while waiting
	wantPlace(t, g, "c", Ticket{Since: t0.Add(time.Minute)}, 1)
	g.Withdraw(types.NamespacedName{Namespace: "elsewhere", Name: "start-a"}) // same name, another namespace
	wantPlace(t, g, "c", Ticket{Since: t0.Add(time.Minute)}, 1)
	g.Withdraw(op("start-a")) // failed after its grant, before any start
	wantGranted(t, g, "c", Ticket{Since: t0.Add(time.Minute)})

	g, _, _ = testGateWithOps(t)
	wantGranted(t, g, "a", Ticket{Op: "start-a"})
	g.Observe(key("a"), Starting, false)
	g.Withdraw(op("start-a")) // timed out while its VM starts
	wantPlace(t, g, "c", Ticket{}, 1)
}

// The VM controller's own start comes first: an operation's ticket does not replace it, and the VM controller's
// pass that no longer asks drops only its own.
func TestTheVMControllersTicketComesFirst(t *testing.T) {
	g, _, _ := testGateWithOps(t)
	wantGranted(t, g, "holder", Ticket{})
	wantPlace(t, g, "vm", Ticket{Restart: true, Since: t0}, 1)
	wantPlace(t, g, "first", Ticket{Since: t0}, 2)
	wantPlace(t, g, "vm", Ticket{Since: t0.Add(time.Hour), Op: "start-1"}, 1) // still the restart's place
	g.Observe(key("vm"), Idle, true)
	wantPlace(t, g, "first", Ticket{Since: t0}, 2)
}
