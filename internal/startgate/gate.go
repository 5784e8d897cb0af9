// Package startgate caps how many VMs start at once (the operator's --max-concurrent-starts): when many VMs are to
// start together — the operator starts with VMs to start, a policy change turns many on, a cluster comes back and
// their VMIs failed — the VM controller asks the gate before each start it makes, and the VMs beyond the cap wait
// their turn, in order.
//
// A slot is taken by a start the gate granted, and by a VM seen starting without the gate (KubeVirt's own restart
// under runStrategy Always, a Start operation, a start in flight when the operator started): the cap counts what
// loads the cluster, whoever started it. A slot is given back once the VM is seen Running, or no longer starting
// after it was seen starting, or after Timeout.
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
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// DefaultTimeout is how long a start may hold its slot without being seen Running.
const DefaultTimeout = 5 * time.Minute

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
	// the VM was created). Zero means now.
	Since time.Time
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

	mu      sync.Mutex
	slots   map[types.NamespacedName]*slot
	waiting map[types.NamespacedName]Ticket
	primed  bool
	warm    bool
	// looked: the VMs looked at before Prime; unseen: the primed VMs not looked at since.
	looked, unseen map[types.NamespacedName]struct{}
	warmBy         time.Time
}

type slot struct {
	taken time.Time
	// starting: the VM has been seen Starting since it took the slot.
	starting bool
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

// Ask claims a slot for the VM key. A VM that holds one keeps it; otherwise it joins the queue, and gets a slot
// when there is a free one and no VM ahead of it in the queue is waiting for it.
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
	g.waiting[key] = t
	g.expire(now)
	g.warmUp(now)
	queue := g.queue()
	place := slices.Index(queue, key)
	if g.warm && place < g.Max-len(g.slots) {
		delete(g.waiting, key)
		g.slots[key] = &slot{taken: now}
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

// Observe records what a pass saw of the VM key: asked tells whether it asked for a slot in that pass (a VM that no
// longer asks leaves the queue). A slot is given back once its VM runs, stops starting after it was seen starting,
// is gone, or after Timeout; a VM seen starting without a slot takes one. Given-back slots go to the next VMs in
// the queue (Enqueue).
func (g *Gate) Observe(key types.NamespacedName, p Phase, asked bool) {
	if !g.Enabled() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	now := g.now()
	g.lookedAt(key)
	if !asked || p == Gone {
		delete(g.waiting, key)
	}
	s, held := g.slots[key]
	switch {
	case held && p == Starting:
		s.starting = true
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

func (g *Gate) init() {
	if g.slots == nil {
		g.slots = map[types.NamespacedName]*slot{}
		g.waiting = map[types.NamespacedName]Ticket{}
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

// wake enqueues the waiting VMs that the free slots can take.
func (g *Gate) wake() {
	free := g.Max - len(g.slots)
	if !g.warm || free <= 0 || len(g.waiting) == 0 || g.Enqueue == nil {
		return
	}
	q := g.queue()
	next := slices.Clone(q[:min(free, len(q))])
	go func() {
		for _, k := range next {
			g.Enqueue(k)
		}
	}()
}
