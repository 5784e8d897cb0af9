// Package startgate caps how many VMs start at once (the operator's --max-concurrent-starts): when many VMs are to
// start together — the operator starts with VMs to start, a policy change turns many on, a cluster comes back and
// their VMIs failed — the VM controller asks the gate before each start it makes, and the VMs beyond the cap wait
// their turn, in order.
//
// VirtualMachineOperations (Start, Restart, an Evict that restarts) ask too, for the VM they act on, with tickets of
// their own (Ticket.Op): the VM controller's passes over that VM do not drop them, and the gate wakes the operation,
// not the VM (EnqueueOp), when its turn comes. A power schedule that starts many VMs at once creates many Start
// operations, and they wait their turn like any start.
//
// A slot is taken by a start the gate granted, and by a VM seen starting without the gate (KubeVirt's own restart
// under runStrategy Always, a start in flight when the operator started): the cap counts what loads the cluster,
// whoever started it. A slot is given back once the VM is seen Running, or no longer starting after it was seen
// starting, or after Timeout. An operation's slot is given back by Withdraw while its VM has not been seen starting
// (the operation failed, or completed without a start seen), and its VM seen Running keeps it until the VM was seen
// starting (a Restart is asked for while the VM still runs).
//
// The order: restarts after a VMI ended (a guest reset, a failure) before every first start, so that a reboot waits
// for the cap only; then spec.startOrder, lower first; then Ticket.Since, earlier first; then the name. Until
// every VM the cache held when the gate was first asked has been looked at once (or WarmUp passed), nothing is
// granted: the first VM reconciled after the operator starts does not jump ahead of a lower startOrder.
//
// The gate's state lives in the operator's memory only. After a restart of the operator it is rebuilt from what the
// reconciler sees: VMs in phase Starting take their slots again, and waiting ones queue again, in the same order
// (a Ticket holds nothing the operator's memory alone knows).
package startgate

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// DefaultTimeout is how long a start may hold its slot without being seen Running.
const DefaultTimeout = 5 * time.Minute

// Recheck is how often a VM or operation waiting for a slot is looked at again without being woken: the place in
// its status is refreshed, and a slot held past its timeout is given back.
const Recheck = 15 * time.Second

// WarmUp bounds how long the gate waits for the reconciler to have looked at every VM before it grants the first
// slot.
const WarmUp = 30 * time.Second

// Ticket is a VM's claim to a start slot.
type Ticket struct {
	// Restart is a restart after the VM's VMI ended: it goes before every first start.
	Restart bool
	// Order is the VM's spec.startOrder: lower first.
	Order int32
	// Since orders VMs of the same kind and Order: earlier first (a restart: when its VMI ended; a first start: when
	// the VM was created; an operation: when it was created). Zero means now.
	Since time.Time
	// Op names the VirtualMachineOperation, in the VM's namespace, that asks: "" is the VM controller's own ticket.
	Op string
}

// Verdict is the gate's answer to a VM that asked for a slot.
type Verdict struct {
	// Granted: the VM may start now; it holds a slot until it is seen running.
	Granted bool
	// Place is the VM's place among the waiting VMs (1 is next), when not granted.
	Place int
	// Waiting is how many VMs wait, InUse how many slots are taken, Max the cap.
	Waiting, InUse, Max int
	// WarmingUp: nothing is granted yet, the gate waits for every VM to have been looked at once.
	WarmingUp bool
	// Holders names the VMs that hold slots, when not granted: the first ShownHolders by namespace and name.
	Holders []types.NamespacedName
}

// ShownHolders is how many of the VMs holding slots a Verdict names.
const ShownHolders = 3

// Explain says why a VM, or an operation, waits, for its status: its place, the cap and the VMs holding the slots.
func (v Verdict) Explain() string {
	if v.WarmingUp {
		return fmt.Sprintf("Waiting for a start slot: the operator looks at every VM once before it grants the first "+
			"(at most %d VMs start at once, --max-concurrent-starts)", v.Max)
	}
	return fmt.Sprintf("Waiting for a start slot: %d VM(s) ahead in the queue; at most %d VMs start at once "+
		"(the operator's --max-concurrent-starts)%s. Restarts go first, then lower spec.startOrder", v.Place-1, v.Max,
		v.holders())
}

// holders says which VMs hold the start slots a waiting VM waits for: ", starting now: ns/a, ns/b and 3 more".
func (v Verdict) holders() string {
	if len(v.Holders) == 0 {
		return ""
	}
	names := make([]string, len(v.Holders))
	for i, h := range v.Holders {
		names[i] = h.String()
	}
	s := ", starting now: " + strings.Join(names, ", ")
	if more := v.InUse - len(v.Holders); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// Phase is what the reconciler saw of a VM after its pass, for the gate's bookkeeping.
type Phase int

const (
	// Idle: neither starting nor running (stopped, waiting, failed, unknown).
	Idle Phase = iota
	// Starting: a start is under way.
	Starting
	// Running: the VM runs.
	Running
	// Gone: the VM was deleted or is being deleted.
	Gone
)

// Gate hands out start slots. A nil *Gate, or one with Max 0, grants every start.
type Gate struct {
	// Max is the number of slots; zero means no cap.
	Max int
	// Timeout gives a slot back when its VM is not seen Running that long after it took it; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Enqueue asks the reconciler to look at a VM again: a waiting VM whose turn has come. It is called without the
	// gate's lock held, from a goroutine of its own.
	Enqueue func(types.NamespacedName)
	// EnqueueOp does the same for a waiting operation (its namespace and name).
	EnqueueOp func(types.NamespacedName)

	mu      sync.Mutex
	slots   map[types.NamespacedName]*slot
	waiting map[types.NamespacedName]Ticket
	// ops maps an operation that asked to its VM, for Withdraw.
	ops    map[types.NamespacedName]types.NamespacedName
	primed bool
	warm   bool
	// looked: the VMs looked at before Prime; unseen: the primed VMs not looked at since.
	looked, unseen map[types.NamespacedName]struct{}
	warmBy         time.Time
}

type slot struct {
	taken time.Time
	// starting: the VM has been seen Starting since it took the slot.
	starting bool
	// op: the operation the slot was granted to ("" the VM controller, or a start seen without the gate).
	op string
}

// Enabled tells whether the gate caps anything.
func (g *Gate) Enabled() bool { return g != nil && g.Max > 0 }

// Primed tells whether Prime was called.
func (g *Gate) Primed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.primed
}

// Prime gives the gate the VMs the cache holds as the reconciler begins to ask: no slot is granted until each of
// them has been looked at (Ask or Observe), was deleted, or WarmUp passed.
func (g *Gate) Prime(keys []types.NamespacedName) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.primed {
		return
	}
	g.init()
	g.primed = true
	g.warmBy = g.now().Add(WarmUp)
	for _, k := range keys {
		if _, seen := g.looked[k]; !seen {
			g.unseen[k] = struct{}{}
		}
	}
	g.looked = nil
}

// PrimeFrom primes the gate, unless it was primed already, with the runpolicy VMs c lists: the first asker, the VM
// controller's or an operation's, does it.
func (g *Gate) PrimeFrom(ctx context.Context, c client.Reader) error {
	if g.Primed() {
		return nil
	}
	var vms v1alpha1.VirtualMachineList
	if err := c.List(ctx, &vms); err != nil {
		return err
	}
	keys := make([]types.NamespacedName, 0, len(vms.Items))
	for i := range vms.Items {
		keys = append(keys, client.ObjectKeyFromObject(&vms.Items[i]))
	}
	g.Prime(keys)
	return nil
}

// Ask claims a slot for the VM key. A VM that holds one keeps it; otherwise it joins the queue, and gets a slot
// when there is a free one and no VM ahead of it in the queue is waiting for it. An operation's ticket does not
// replace the VM controller's own for the same VM: the start the VM controller waits for comes first, and the
// operation waits with its place.
func (g *Gate) Ask(key types.NamespacedName, t Ticket) Verdict {
	if !g.Enabled() {
		return Verdict{Granted: true}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	now := g.now()
	g.lookedAt(key)
	if _, ok := g.slots[key]; ok {
		delete(g.waiting, key)
		return Verdict{Granted: true, InUse: len(g.slots), Max: g.Max}
	}
	if t.Since.IsZero() {
		t.Since = now
	}
	if own, ok := g.waiting[key]; !ok || own.Op != "" || t.Op == "" {
		g.waiting[key] = t
	}
	if t.Op != "" {
		g.ops[types.NamespacedName{Namespace: key.Namespace, Name: t.Op}] = key
	}
	g.expire(now)
	g.warmUp(now)
	queue := g.queue()
	place := slices.Index(queue, key)
	if g.warm && place < g.Max-len(g.slots) {
		delete(g.waiting, key)
		g.slots[key] = &slot{taken: now, op: t.Op}
		return Verdict{Granted: true, InUse: len(g.slots), Max: g.Max}
	}
	g.wake() // the VMs ahead of it, should a slot be free for them
	return Verdict{Place: place + 1, Waiting: len(queue), InUse: len(g.slots), Max: g.Max, WarmingUp: !g.warm,
		Holders: g.holders()}
}

// holders is the first ShownHolders of the VMs holding slots, by namespace and name.
func (g *Gate) holders() []types.NamespacedName {
	h := make([]types.NamespacedName, 0, len(g.slots))
	for k := range g.slots {
		h = append(h, k)
	}
	slices.SortFunc(h, compareKeys)
	return h[:min(len(h), ShownHolders)]
}

// compareKeys orders VMs by namespace, then name.
func compareKeys(a, b types.NamespacedName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Observe records what a VM controller's pass saw of the VM key: asked tells whether it asked for a slot in that
// pass (a VM that no longer asks leaves the queue; an operation's ticket stays). A slot is given back once its VM
// runs, stops starting after it was seen starting, is gone, or after Timeout; a VM seen starting without a slot
// takes one. Given-back slots go to the next VMs in the queue (Enqueue).
func (g *Gate) Observe(key types.NamespacedName, p Phase, asked bool) {
	if !g.Enabled() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	now := g.now()
	g.lookedAt(key)
	if t, ok := g.waiting[key]; ok && (p == Gone || !asked && t.Op == "") {
		delete(g.waiting, key)
	}
	s, held := g.slots[key]
	switch {
	case held && p == Starting:
		s.starting = true
	case held && p == Running && s.op != "" && !s.starting:
		// An operation's Restart was granted while its VM still runs: the slot is for the start to come.
	case held && (p == Running || p == Gone || s.starting):
		delete(g.slots, key)
	case !held && p == Starting:
		delete(g.waiting, key)
		g.slots[key] = &slot{taken: now, starting: true}
	}
	g.expire(now)
	g.warmUp(now)
	g.wake()
}

// Forget drops the VM key (deleted).
func (g *Gate) Forget(key types.NamespacedName) { g.Observe(key, Gone, false) }

// Withdraw drops what the operation op (its namespace and name) holds: its place in the queue, and a slot granted to
// it whose VM has not been seen starting. An operation withdraws once it no longer heads for its signal: finished,
// deleted, or waiting for something else first. A slot whose VM was seen starting stays until the VM runs.
func (g *Gate) Withdraw(op types.NamespacedName) {
	if !g.Enabled() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	key, asked := g.ops[op]
	if !asked {
		return
	}
	delete(g.ops, op)
	if t, ok := g.waiting[key]; ok && t.Op == op.Name {
		delete(g.waiting, key)
	}
	if s, ok := g.slots[key]; ok && s.op == op.Name && !s.starting {
		delete(g.slots, key)
		g.wake()
	}
}

func (g *Gate) init() {
	if g.slots == nil {
		g.slots = map[types.NamespacedName]*slot{}
		g.waiting = map[types.NamespacedName]Ticket{}
		g.ops = map[types.NamespacedName]types.NamespacedName{}
		g.looked = map[types.NamespacedName]struct{}{}
		g.unseen = map[types.NamespacedName]struct{}{}
	}
}

// lookedAt notes a pass over the VM key, for the warm-up.
func (g *Gate) lookedAt(key types.NamespacedName) {
	if g.primed {
		delete(g.unseen, key)
	} else {
		g.looked[key] = struct{}{}
	}
}

func (g *Gate) now() time.Time {
	if g.Clock != nil {
		return g.Clock()
	}
	return time.Now()
}

func (g *Gate) expire(now time.Time) {
	timeout := cmp.Or(g.Timeout, DefaultTimeout)
	for k, s := range g.slots {
		if now.Sub(s.taken) >= timeout {
			delete(g.slots, k)
		}
	}
}

// warmUp ends the warm-up once every primed VM has been looked at, or WarmUp passed. An unprimed gate stays cold.
func (g *Gate) warmUp(now time.Time) {
	if g.warm || !g.primed {
		return
	}
	if len(g.unseen) == 0 || !now.Before(g.warmBy) {
		g.warm = true
		g.unseen = map[types.NamespacedName]struct{}{}
	}
}

// queue is the waiting VMs in the order they get slots.
func (g *Gate) queue() []types.NamespacedName {
	q := make([]types.NamespacedName, 0, len(g.waiting))
	for k := range g.waiting {
		q = append(q, k)
	}
	slices.SortFunc(q, func(a, b types.NamespacedName) int {
		ta, tb := g.waiting[a], g.waiting[b]
		if ta.Restart != tb.Restart {
			if ta.Restart {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(ta.Order, tb.Order), ta.Since.Compare(tb.Since), compareKeys(a, b))
	})
	return q
}

// wake enqueues the waiting VMs, or operations, that the free slots can take.
func (g *Gate) wake() {
	free := g.Max - len(g.slots)
	if !g.warm || free <= 0 || len(g.waiting) == 0 {
		return
	}
	q := g.queue()
	vms, ops := []types.NamespacedName{}, []types.NamespacedName{}
	for _, k := range q[:min(free, len(q))] {
		if op := g.waiting[k].Op; op != "" {
			ops = append(ops, types.NamespacedName{Namespace: k.Namespace, Name: op})
		} else {
			vms = append(vms, k)
		}
	}
	go func() {
		for _, k := range vms {
			if g.Enqueue != nil {
				g.Enqueue(k)
			}
		}
		for _, k := range ops {
			if g.EnqueueOp != nil {
				g.EnqueueOp(k)
			}
		}
	}()
}
