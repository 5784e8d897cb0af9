package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/test/fixture"
)

// floorPhase measures the apiserver's floor: one write's round trip, now (N VMs in etcd, system quiet).
func (r *run) floorPhase(ctx context.Context) error {
	var err error
	if r.res.FloorP50, r.res.FloorP99, err = r.writeFloor(ctx); err != nil {
		return err
	}
	r.res.VMFloorP50, r.res.VMFloorP99, err = r.vmWriteFloor(ctx)
	return err
}

// writeFloor measures floorN sequential writes (a ConfigMap annotation patch) by an admin client: the cheapest
// write kube-apiserver serves.
func (r *run) writeFloor(ctx context.Context) (p50, p99 float64, err error) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: "bench-floor"}}
	if err := r.k8s.Create(ctx, cm); err != nil {
		return 0, 0, err
	}
	return r.patchLatency(ctx, cm)
}

// vmWriteFloor measures floorN sequential writes of a runpolicy.io VirtualMachine (an annotation patch, which goes
// through the same decoding, schema validation and field management as the operator's status writes), on an
// AlwaysOff VM in a namespace of its own so that it counts nowhere else.
func (r *run) vmWriteFloor(ctx context.Context) (p50, p99 float64, err error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.ns + "-floor"}}
	if err := r.k8s.Create(ctx, ns); err != nil {
		return 0, 0, err
	}
	vm := fixture.VM(ns.Name, "floor", v1alpha1.RunPolicyAlwaysOff)
	if err := r.k8s.Create(ctx, vm); err != nil {
		return 0, 0, err
	}
	// Let the operator create its KubeVirt VM and write its status first: the patches below change nothing it
	// reads, so its passes on them make no write.
	if err := r.waitFor("the write-floor VM to converge", func() (bool, string, error) {
		got := &v1alpha1.VirtualMachine{}
		if err := r.k8s.Get(ctx, client.ObjectKeyFromObject(vm), got); err != nil {
			return false, "", err
		}
		return got.Status.ObservedGeneration == got.Generation && got.Status.Phase == v1alpha1.VirtualMachineStopped,
			string(got.Status.Phase), nil
	}); err != nil {
		return 0, 0, err
	}
	return r.patchLatency(ctx, vm)
}

// patchLatency times floorN sequential annotation merge patches of obj.
func (r *run) patchLatency(ctx context.Context, obj client.Object) (p50, p99 float64, err error) {
	var lat []float64
	for i := range r.cfg.floorN {
		patch := fmt.Appendf(nil, `{"metadata":{"annotations":{"bench.runpolicy.io/i":"%d"}}}`, i)
		t := time.Now()
		if err := r.k8s.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t).Seconds())
	}
	return pct(lat, 50), pct(lat, 99), nil
}
