package main

import (
	"context"
	"fmt"
	"log"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// plainNS holds the kubevirt.io VMs of the plain-creation phase.
const plainNS = "bench-plain"

// plainCreatePhase measures what runpolicy adds to creating VMs: before the operator starts, it creates the N
// kubevirt.io VMs runpolicy would apply for the N runpolicy VMs (vm.Rendered: the same template and hook sidecar,
// the runStrategy that starts them), the same way (-workers clients), in a namespace of their own, and times them
// until KubeVirt reports each where the runpolicy VMs' convergence wants its twin (Running for the policies that
// start, Stopped for the others). Then it deletes them and waits until their VMIs and VMs are gone, so that the
// runpolicy phases run on the same empty cluster.
func (r *run) plainCreatePhase(ctx context.Context) error {
	if err := r.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: plainNS}}); err != nil {
		return err
	}
	t0 := time.Now()
	err := r.measure(ctx, "plain", func() error {
		err := r.parallel(r.n, func(i int) error {
			p := r.policyOf(i)
			kv, err := vm.Rendered(fixture.VM(plainNS, r.vmName(i), p), policy.RunStrategy(p, true), hookSidecarImage)
			if err != nil {
				return err
			}
			kv.OwnerReferences, kv.Labels, kv.Annotations, kv.TypeMeta = nil, nil, nil, metav1.TypeMeta{}
			return r.k8s.Create(ctx, kv)
		})
		if err != nil {
			return err
		}
		return r.waitFor("plain kubevirt.io VMs to converge", func() (bool, string, error) {
			list := &kvv1.VirtualMachineList{}
			if err := r.cache.List(ctx, list, client.InNamespace(plainNS), client.UnsafeDisableDeepCopy); err != nil {
				return false, "", err
			}
			done := 0
			for i := range list.Items {
				kv := &list.Items[i]
				want := kvv1.VirtualMachineStatusStopped
				if kv.Spec.RunStrategy != nil && *kv.Spec.RunStrategy == kvv1.RunStrategyAlways {
					want = kvv1.VirtualMachineStatusRunning
				}
				if kv.Status.PrintableStatus == want {
					done++
				}
			}
			return done == r.n, fmt.Sprintf("%d/%d converged", done, r.n), nil
		})
	})
	if err != nil {
		return err
	}
	r.res.PlainConvergeCreate = time.Since(t0).Seconds()
	log.Printf("bench: N=%d: %d plain kubevirt.io VMs converged in %.1fs (%s); deleting them", r.n, r.n,
		r.res.PlainConvergeCreate, r.res.ComponentCPUSeconds["plain"])
	if err := r.k8s.DeleteAllOf(ctx, &kvv1.VirtualMachine{}, client.InNamespace(plainNS)); err != nil {
		return err
	}
	return r.waitFor("the plain VMs to be gone", func() (bool, string, error) {
		vms, vmis := &kvv1.VirtualMachineList{}, &kvv1.VirtualMachineInstanceList{}
		if err := r.cache.List(ctx, vms, client.InNamespace(plainNS)); err != nil {
			return false, "", err
		}
		if err := r.cache.List(ctx, vmis, client.InNamespace(plainNS)); err != nil {
			return false, "", err
		}
		return len(vms.Items)+len(vmis.Items) == 0, fmt.Sprintf("%d VMs and %d VMIs left", len(vms.Items), len(vmis.Items)), nil
	})
}
