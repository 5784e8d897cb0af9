package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// resyncPhase stops the operator and starts it again with nothing changed, then waits until it has reconciled
// every VM once. Every VM is already converged, so any write here is one too many.
func (r *run) resyncPhase(ctx context.Context) error {
	res := r.res
	r.stopOperator()
	t0 := time.Now()
	err := r.measure(ctx, "resync", func() error {
		if err := r.startOperator(); err != nil {
			return err
		}
		if err := r.resynced(); err != nil {
			return fmt.Errorf("resync after a plain operator restart: %w", err)
		}
		res.ResyncRestart = time.Since(t0).Seconds()
		return nil
	})
	if err != nil {
		return err
	}
	// Events reach kube-apiserver from the recorder's goroutine after the reconcile that emitted them.
	time.Sleep(2 * time.Second)
	wc, err := countWrites(r.auditLog, "runpolicy-controller", t0, time.Now())
	if err != nil {
		return err
	}
	res.ResyncWrites, res.ResyncWritesByKind = wc.Total, wc.String()
	log.Printf("bench: N=%d: resynced after a plain operator restart in %.1fs, %d writes (%s)", r.n, res.ResyncRestart,
		res.ResyncWrites, res.ComponentCPUSeconds["resync"])
	res.OperatorPeakRSSByRun["resync"] = r.sampleRSS()
	return nil
}

// restartPhase stops the operator, changes every VM's spec while it is down, starts it and waits until every VM
// converged.
func (r *run) restartPhase(ctx context.Context) error {
	res := r.res
	r.stopOperator()
	if err := r.bumpSpecs(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	err := r.measure(ctx, "restart", func() error {
		if err := r.startOperator(); err != nil {
			return err
		}
		if err := r.converge(ctx, "convergence after a restart with every spec changed", 2); err != nil {
			return fmt.Errorf("converging after the operator restart with every spec changed: %w", err)
		}
		res.ConvergeRestart = time.Since(t0).Seconds()
		return nil
	})
	if err != nil {
		return err
	}
	if first, ok := r.firstWrite(t0); ok {
		res.OperatorReadyAfter = first.Sub(t0).Seconds()
	}
	if wc, err := countWrites(r.auditLog, "runpolicy-controller", t0, time.Now()); err == nil {
		res.RestartWrites, res.RestartWritesByKind = wc.Total, wc.String()
	}
	log.Printf("bench: N=%d: converged after the operator restart with every spec changed in %.1fs, %d operator writes (%s)", r.n,
		res.ConvergeRestart, res.RestartWrites, res.ComponentCPUSeconds["restart"])
	return nil
}

// bumpSpecs changes every VM's template (an annotation), so each needs a reconcile: generation rev.
func (r *run) bumpSpecs(ctx context.Context) error {
	return r.parallel(r.n, func(i int) error {
		patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"bench.runpolicy.io/rev":"2"}}}}}`)
		obj := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: r.vmName(i)}}
		return r.k8s.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch))
	})
}

// resynced waits until a freshly started operator has reconciled every VM once: its virtualmachine controller
// counted N reconciles (its cache sync queues every VM; a new process counts from 0), with none queued or running.
// The VMs' status cannot tell: a resync of a converged VM changes nothing.
func (r *run) resynced() error {
	return r.waitFor("the resync after a plain operator restart", func() (bool, string, error) {
		m, err := r.scrape()
		if err != nil {
			return false, fmt.Sprintf("operator metrics: %v", err), nil // not serving yet
		}
		return m.reconciles >= float64(r.n) && m.queueDepth == 0 && m.activeWorkers == 0,
			fmt.Sprintf("%.0f/%d reconciles, %.0f queued, %.0f running", m.reconciles, r.n, m.queueDepth, m.activeWorkers), nil
	})
}

// firstWrite finds the operator's first write after t in the audit log.
func (r *run) firstWrite(t time.Time) (time.Time, bool) {
	f, err := os.ReadFile(r.auditLog)
	if err != nil {
		return time.Time{}, false
	}
	var first time.Time
	for _, line := range strings.Split(string(f), "\n") {
		var ev auditEvent
		if json.Unmarshal([]byte(line), &ev) != nil || !strings.HasPrefix(ev.UserAgent, "runpolicy-controller") {
			continue
		}
		if ev.RequestReceived.After(t) && (first.IsZero() || ev.RequestReceived.Before(first)) {
			first = ev.RequestReceived
		}
	}
	return first, !first.IsZero()
}
