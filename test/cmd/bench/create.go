package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// createPhase creates N VMs and waits until they converged.
func (r *run) createPhase(ctx context.Context) error {
	res := r.res
	t0 := time.Now()
	err := r.measure(ctx, "create", func() error {
		if err := r.createVMs(ctx); err != nil {
			return err
		}
		res.CreateSeconds = time.Since(t0).Seconds()
		log.Printf("bench: N=%d: created in %.1fs, waiting for convergence", r.n, res.CreateSeconds)
		if err := r.converge(ctx, "convergence after creation", 1); err != nil {
			return fmt.Errorf("converging after creation: %w", err)
		}
		res.ConvergeCreate = time.Since(t0).Seconds()
		return nil
	})
	if err != nil {
		return err
	}
	log.Printf("bench: N=%d: converged after creation in %.1fs (%s)", r.n, res.ConvergeCreate, res.ComponentCPUSeconds["create"])
	res.OperatorPeakRSSByRun["create"] = r.sampleRSS()
	return nil
}

func (r *run) vmName(i int) string { return fmt.Sprintf("vm-%05d", i) }

func (r *run) policyOf(i int) v1alpha1.RunPolicy { return r.cfg.mix[i%len(r.cfg.mix)] }

// parallel runs f(0..n-1) on cfg.workers goroutines; the first error wins.
func (r *run) parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range r.cfg.workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

func (r *run) createVMs(ctx context.Context) error {
	return r.parallel(r.n, func(i int) error {
		return r.k8s.Create(ctx, fixture.VM(r.ns, r.vmName(i), r.policyOf(i)))
	})
}

// waitFor polls done every 100ms until it reports true, for at most -phase-timeout, logging its progress report
// every 15s with what is awaited; it gives up early if the operator process ends.
func (r *run) waitFor(what string, done func() (bool, string, error)) error {
	return r.waitWithin(what, r.cfg.phaseLimit, done)
}

// waitWithin is waitFor with its own time limit.
func (r *run) waitWithin(what string, limit time.Duration, done func() (bool, string, error)) error {
	deadline := time.Now().Add(limit)
	lastLog := time.Now()
	for {
		ok, progress, err := done()
		if err != nil || ok {
			return err
		}
		if r.ctx.Err() != nil {
			return fmt.Errorf("interrupted: %s", progress)
		}
		select {
		case <-r.opDone:
			return fmt.Errorf("the operator exited: %s", progress)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s after %s", progress, limit)
		}
		if time.Since(lastLog) > 15*time.Second {
			log.Printf("bench: N=%d: waiting for %s: %s", r.n, what, progress)
			lastLog = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// converge waits until every VM reports its current generation, and the phase its policy demands when nothing else
// happened (AlwaysOn and AlwaysOnUntilStoppedManually Running and Ready, Manual and AlwaysOff Stopped).
func (r *run) converge(ctx context.Context, what string, generation int64) error {
	_, err := r.convergeWithin(ctx, what, generation, r.cfg.phaseLimit)
	return err
}

// convergeWithin is converge with its own time limit; it also returns the VMs that did not converge.
func (r *run) convergeWithin(ctx context.Context, what string, generation int64, limit time.Duration) (pending []string, err error) {
	err = r.waitWithin(what, limit, func() (bool, string, error) {
		pending = pending[:0]
		list := &v1alpha1.VirtualMachineList{}
		if err := r.cache.List(ctx, list, client.InNamespace(r.ns), client.UnsafeDisableDeepCopy); err != nil {
			return false, "", err
		}
		done := 0
		for i := range list.Items {
			vm := &list.Items[i]
			if vm.Generation < generation || vm.Status.ObservedGeneration != vm.Generation {
				continue
			}
			want := v1alpha1.VirtualMachineStopped
			if vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOn || vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOnUntilStoppedManually {
				want = v1alpha1.VirtualMachineRunning
			}
			if vm.Status.Phase == want {
				done++
			} else {
				pending = append(pending, fmt.Sprintf("%s (%s, %s)", vm.Name, vm.Spec.RunPolicy, vm.Status.Phase))
			}
		}
		return done == r.n, fmt.Sprintf("%d/%d VMs converged", done, r.n), nil
	})
	return pending, err
}
