package main

import (
	"context"
	"log"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// The two kinds of VM the reset stream reboots.
const (
	kindRunpolicy = "runpolicy"
	kindKubeVirt  = "kubevirt"
)

// resetRecord is one guest reset: its VM, when the reset was done (the node layer ended the pod and the VMI),
// when a watch saw the old VMI final, and when the new VMI was created and Running.
type resetRecord struct {
	kind, ns, name                 string
	reset, final, created, running time.Time
}

// resetPhase runs the reset stream and computes its figures: per kind, and for runpolicy the operator's part
// from the audit log, its reconcile time and its writes per restart.
func (r *run) resetPhase(ctx context.Context) error {
	res := r.res
	rec0, _ := r.scrape()
	tStream := time.Now()
	var recs []resetRecord
	timedOut := map[string]int{}
	err := r.measure(ctx, "resets", func() error {
		recs, timedOut = r.resetStream(ctx)
		// Let the last restarts finish their bookkeeping before counting writes. A VM that does not get there
		// within two minutes is reported, not waited for.
		stuck, err := r.convergeWithin(ctx, "the reset stream's last restarts", 2, 2*time.Minute)
		if err != nil {
			res.NotConvergedAfterResets = stuck
			log.Printf("bench: N=%d: not converged after the reset stream: %v", r.n, stuck)
		}
		time.Sleep(2 * time.Second)
		return nil
	})
	if err != nil {
		return err
	}
	tEnd := time.Now()
	rec1, _ := r.scrape()

	byKind := func(kind string) (created, running, finalToNew []float64) {
		for _, rc := range recs {
			if rc.kind != kind {
				continue
			}
			created = append(created, rc.created.Sub(rc.reset).Seconds())
			if !rc.running.IsZero() {
				running = append(running, rc.running.Sub(rc.reset).Seconds())
			}
			if !rc.final.IsZero() {
				finalToNew = append(finalToNew, rc.created.Sub(rc.final).Seconds())
			}
		}
		return created, running, finalToNew
	}
	lat, run, f2n := byKind(kindRunpolicy)
	res.Resets, res.ResetsTimedOut = len(lat), timedOut[kindRunpolicy]
	res.ResetP50, res.ResetP99, res.ResetMax = pct(lat, 50), pct(lat, 99), pct(lat, 100)
	res.RunningP50, res.RunningP99 = pct(run, 50), pct(run, 99)
	res.FinalToNewP50, res.FinalToNewP99 = pct(f2n, 50), pct(f2n, 99)
	kb := &res.KubeVirt
	lat, run, f2n = byKind(kindKubeVirt)
	kb.Resets, kb.ResetsTimedOut = len(lat), timedOut[kindKubeVirt]
	kb.ResetP50, kb.ResetP99, kb.ResetMax = pct(lat, 50), pct(lat, 99), pct(lat, 100)
	kb.RunningP50, kb.RunningP99 = pct(run, 50), pct(run, 99)
	kb.FinalToNewP50, kb.FinalToNewP99 = pct(f2n, 50), pct(f2n, 99)

	if calls, err := restartCalls(r.auditLog, "runpolicy-controller"); err == nil {
		var f2s, s2n, f2i, iw, i2s []float64
		for _, rc := range recs {
			c := calls[rc.name]
			if rc.kind != kindRunpolicy || c == nil || rc.final.IsZero() {
				continue
			}
			start, ok := c.startAfter(rc.final, rc.created)
			if !ok {
				continue
			}
			f2s = append(f2s, start.Received.Sub(rc.final).Seconds())
			s2n = append(s2n, rc.created.Sub(start.Received).Seconds())
			if intent, ok := c.intentBefore(rc.final, start.Received); ok {
				f2i = append(f2i, intent.Received.Sub(rc.final).Seconds())
				iw = append(iw, intent.Done.Sub(intent.Received).Seconds())
				i2s = append(i2s, start.Received.Sub(intent.Done).Seconds())
			}
		}
		res.FinalToStartP50, res.FinalToStartP99 = pct(f2s, 50), pct(f2s, 99)
		res.StartToNewP50, res.StartToNewP99 = pct(s2n, 50), pct(s2n, 99)
		res.FinalToIntentP50, res.FinalToIntentP99 = pct(f2i, 50), pct(f2i, 99)
		res.IntentWriteP50, res.IntentWriteP99 = pct(iw, 50), pct(iw, 99)
		res.IntentToStartP50, res.IntentToStartP99 = pct(i2s, 50), pct(i2s, 99)
	}
	if dc := rec1.reconcileCount - rec0.reconcileCount; dc > 0 {
		res.ReconcileMean = (rec1.reconcileSum - rec0.reconcileSum) / dc
	}
	wc, err := countWrites(r.auditLog, "runpolicy-controller", tStream, tEnd)
	if err != nil {
		return err
	}
	if res.Resets > 0 {
		res.WritesPerRestart = float64(wc.Total) / float64(res.Resets)
		res.StateWritesPerRestart = float64(wc.Total-wc.Events) / float64(res.Resets)
		res.EventsPerRestart = float64(wc.Events) / float64(res.Resets)
	}
	res.WritesByKind, res.FailedWrites, res.FailedWritesBy = wc.String(), wc.Failed, wc.FailedBy
	return nil
}

// resetStream reboots guests, alternating between a running AlwaysOnUntilStoppedManually VM (runpolicy restarts
// it) and one of KubeVirt's baseline VMs (runStrategy Always: KubeVirt restarts it), cfg.resetRate per second of
// each kind, cfg.resets of each kind. A VM is not reset again until its new VMI runs and KubeVirt holds no start
// or stop request for it.
func (r *run) resetStream(ctx context.Context) (recs []resetRecord, timedOut map[string]int) {
	timedOut = map[string]int{}
	type target struct{ kind, ns, name string }
	pools := map[string][]target{}
	for i := range r.n {
		if r.policyOf(i) == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually {
			pools[kindRunpolicy] = append(pools[kindRunpolicy], target{kindRunpolicy, r.ns, r.vmName(i)})
		}
	}
	for i := range r.baselineCount() {
		pools[kindKubeVirt] = append(pools[kindKubeVirt], target{kindKubeVirt, r.kvNS, r.baselineName(i)})
	}
	var kinds []string
	for _, k := range []string{kindRunpolicy, kindKubeVirt} {
		if len(pools[k]) > 0 {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 || r.cfg.resets == 0 {
		return nil, timedOut
	}
	rng := rand.New(rand.NewPCG(r.cfg.seed, uint64(r.n)))
	var mu sync.Mutex
	busy := map[target]bool{}
	started := map[string]int{}
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / r.cfg.resetRate / float64(len(kinds))))
	defer tick.Stop()
	deadline := time.Now().Add(r.cfg.phaseLimit)
	lastLog := time.Now()
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		kind := kinds[i%len(kinds)]
		if slices.IndexFunc(kinds, func(k string) bool { return started[k] < r.cfg.resets }) < 0 {
			break
		}
		<-tick.C
		if time.Since(lastLog) > 15*time.Second {
			mu.Lock()
			log.Printf("bench: N=%d: waiting for the reset stream: %v resets started, %d new VMIs, %v timed out", r.n, started, len(recs), timedOut)
			mu.Unlock()
			lastLog = time.Now()
		}
		if started[kind] >= r.cfg.resets {
			continue
		}
		mu.Lock()
		var free []target
		for _, t := range pools[kind] {
			if !busy[t] {
				free = append(free, t)
			}
		}
		if len(free) == 0 {
			mu.Unlock()
			continue
		}
		t := free[rng.IntN(len(free))]
		busy[t] = true
		mu.Unlock()
		started[kind]++
		wg.Go(func() {
			defer func() { mu.Lock(); delete(busy, t); mu.Unlock() }()
			rec, ok, err := r.reset(ctx, t.kind, t.ns, t.name, deadline)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				log.Printf("bench: reset %s/%s: %v", t.ns, t.name, err)
			case !ok:
				timedOut[t.kind]++
			default:
				recs = append(recs, rec)
			}
		})
	}
	wg.Wait()
	for _, k := range kinds {
		if started[k] < r.cfg.resets {
			log.Printf("bench: N=%d: reset stream: only %d of %d %s resets started within %s", r.n, started[k], r.cfg.resets, k, r.cfg.phaseLimit)
		}
	}
	return recs, timedOut
}

// reset reboots one guest and follows it until its new VMI runs: created (the node layer's watch) and Running
// (the bench's watch). ok is false when no new VMI came within 2 minutes (or by the deadline).
func (r *run) reset(ctx context.Context, kind, ns, name string, deadline time.Time) (rec resetRecord, ok bool, err error) {
	before := r.node.VMIUIDs(ns, name)
	if len(before) == 0 {
		return rec, false, nil
	}
	old := before[len(before)-1]
	if err := r.node.GuestReboot(ctx, ns, name); err != nil {
		return rec, false, err
	}
	rec = resetRecord{kind: kind, ns: ns, name: name, reset: time.Now()}
	limit := rec.reset.Add(2 * time.Minute)
	if limit.After(deadline) {
		limit = deadline
	}
	var newUID types.UID
	for newUID == "" {
		if uids := r.node.VMIUIDs(ns, name); len(uids) > len(before) {
			rec.created, newUID = time.Now(), uids[len(before)]
			break
		}
		if time.Now().After(limit) || ctx.Err() != nil {
			return rec, false, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	rec.final, _ = r.seen(old)
	// Keep the VM busy until its new VMI runs, so the next reset hits a running guest, and until KubeVirt has
	// dropped the start request it acted on: virt-controller trims it in a later pass over the VM, and only if the
	// new VMI is then not final, so a guest that ended before that pass would leave KubeVirt holding a stale start
	// request, which virt-api answers to every further start with "stop/start already underway".
	for time.Now().Before(limit) && ctx.Err() == nil {
		if rec.running.IsZero() {
			_, rec.running = r.seen(newUID)
		}
		if !rec.running.IsZero() && r.noStateChangeRequests(ctx, ns, name) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return rec, true, nil
}

// noStateChangeRequests tells whether the KubeVirt VM holds no start or stop request (from the bench's cache).
func (r *run) noStateChangeRequests(ctx context.Context, ns, name string) bool {
	vm := &kvv1.VirtualMachine{}
	if err := r.cache.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
		return false
	}
	return len(vm.Status.StateChangeRequests) == 0
}
