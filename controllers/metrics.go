package controllers

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/metrics"
)

// SetupMetrics points runpolicy's state gauges (VMs by phase, pending changes, degraded mode, operations) at mgr's
// cache, computed at scrape time and reported while mgr leads, and counts the shutdowns its VMs' status records
// (runpolicy_vm_shutdowns_total). Setup calls it.
func SetupMetrics(mgr ctrl.Manager) error {
	metrics.WatchState(mgr.GetCache(), mgr.Elected())
	// Not blocking: the cache starts with the manager; the VM controller reads the same informer.
	inf, err := mgr.GetCache().GetInformer(context.Background(), &v1alpha1.VirtualMachine{}, cache.BlockUntilSynced(false))
	if err != nil {
		return err
	}
	_, err = inf.AddEventHandler(metrics.ShutdownHandler(mgr.Elected()))
	return err
}
