package main

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

func (r *run) baselineName(i int) string { return fmt.Sprintf("kv-%05d", i) }

// baselineCount is how many kubevirt.io VMs KubeVirt's baseline has: -baseline-vms, at most N.
func (r *run) baselineCount() int { return min(r.cfg.baselineVMs, r.n) }

// createBaseline creates KubeVirt's baseline: kubevirt.io VMs with runStrategy Always, in a namespace of their
// own, whose template is the one the operator rendered for a runpolicy VM (the same hook sidecar, so the same
// launcher pod, and the same guest end from the node layer), and waits until their VMIs run. Created after the
// restart phase so that the phases before it measure runpolicy's VMs alone.
func (r *run) createBaseline(ctx context.Context) error {
	n := r.baselineCount()
	r.res.KubeVirt.VMs = n
	if n == 0 {
		return nil
	}
	var tmpl *kvv1.VirtualMachineInstanceTemplateSpec
	for i := range r.n {
		if r.policyOf(i) != v1alpha1.RunPolicyAlwaysOnUntilStoppedManually && r.policyOf(i) != v1alpha1.RunPolicyAlwaysOn {
			continue
		}
		kvvm := &kvv1.VirtualMachine{}
		if err := r.k8s.Get(ctx, client.ObjectKey{Namespace: r.ns, Name: r.vmName(i)}, kvvm); err != nil {
			return err
		}
		tmpl = kvvm.Spec.Template.DeepCopy()
		break
	}
	if tmpl == nil {
		return fmt.Errorf("no running runpolicy VM whose template to copy (policy mix %v)", r.cfg.mix)
	}
	// KubeVirt's VM mutator gave that VM its own firmware UUID and serial: each baseline VM gets its own.
	tmpl.Spec.Domain.Firmware = nil
	t0 := time.Now()
	err := r.parallel(n, func(i int) error {
		name := r.baselineName(i)
		t := tmpl.DeepCopy()
		t.ObjectMeta.Labels = map[string]string{"kubevirt.io/vm": name}
		vm := &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: r.kvNS, Name: name},
			Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyAlways), Template: t}}
		return r.k8s.Create(ctx, vm)
	})
	if err != nil {
		return err
	}
	err = r.waitFor("KubeVirt's baseline VMs to run", func() (bool, string, error) {
		list := &kvv1.VirtualMachineInstanceList{}
		if err := r.cache.List(ctx, list, client.InNamespace(r.kvNS), client.UnsafeDisableDeepCopy); err != nil {
			return false, "", err
		}
		running := 0
		for i := range list.Items {
			if list.Items[i].Status.Phase == kvv1.Running {
				running++
			}
		}
		return running == n, fmt.Sprintf("%d/%d VMIs running", running, n), nil
	})
	log.Printf("bench: N=%d: KubeVirt's baseline: %d VMs (runStrategy Always) running after %.1fs", r.n, n, time.Since(t0).Seconds())
	return err
}

// kubeVirtIdle waits until KubeVirt and the node layer have nothing left to do: the node layer's controllers (in
// this process) have nothing queued or running, and the bench's watch has seen no KubeVirt VM or VMI change, for
// two seconds. virt-controller runs as its own process; its work shows as those changes.
func (r *run) kubeVirtIdle() error {
	var quietSince time.Time
	return r.waitFor("KubeVirt and the node layer to go idle", func() (bool, string, error) {
		families, err := crmetrics.Registry.Gather()
		if err != nil {
			return false, "", err
		}
		busy := 0.0
		for _, f := range families {
			if f.GetName() != "workqueue_depth" && f.GetName() != "controller_runtime_active_workers" {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if (l.GetName() == "name" || l.GetName() == "controller") && strings.HasPrefix(l.GetValue(), "node-") {
						busy += m.GetGauge().GetValue()
					}
				}
			}
		}
		lastChange := time.Since(time.Unix(0, r.lastKubeVirtEvent.Load()))
		if busy > 0 || lastChange < time.Second {
			quietSince = time.Time{}
		} else if quietSince.IsZero() {
			quietSince = time.Now()
		}
		return !quietSince.IsZero() && time.Since(quietSince) >= time.Second,
			fmt.Sprintf("node layer: %.0f queued or running; last KubeVirt VM/VMI change %s ago", busy, lastChange.Round(time.Millisecond)), nil
	})
}
