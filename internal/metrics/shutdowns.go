package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// VMShutdownsName counts the ended VMIs.
const VMShutdownsName = "runpolicy_vm_shutdowns_total"

// knownSources are the values of status.lastShutdown.source, the reason label of the shutdown and restart counters.
var knownSources = []string{string(v1alpha1.ShutdownGuestReset), string(v1alpha1.ShutdownGuestShutdown),
	string(v1alpha1.ShutdownHostReset), string(v1alpha1.ShutdownCrash), string(v1alpha1.ShutdownUser),
	string(v1alpha1.ShutdownUnknown)}

// VMShutdowns counts the VMIs of runpolicy VMs that ended, by the VM's runPolicy and by why the VMI ended
// (status.lastShutdown.source: guest-reset, guest-shutdown, host-reset, crash, user, unknown), whatever followed:
// a restart, a stop, or KubeVirt's own action (AlwaysOn). It is counted from the VMs' status as the leader's cache
// sees it change (ShutdownHandler), not where the decision is made, so every path that records a shutdown counts.
var VMShutdowns = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: VMShutdownsName,
	Help: "Ended VMIs of runpolicy VirtualMachines, by runPolicy and by why the VMI ended (status.lastShutdown.source).",
}, []string{labelPolicy, labelReason})

// ShutdownHandler is an event handler for the informer of runpolicy VirtualMachines that counts each shutdown the
// VMs' status records (a new status.lastShutdown.vmiUID) while elected is closed (nil: always). Only the leader
// writes status, but every replica's cache sees it: counting on the leader alone keeps sums over replicas right.
// Objects the informer lists (at start, or after a lost watch) are not counted again: only a change from a known
// previous state is. Two shutdowns of one VM within one lost watch count once.
func ShutdownHandler(elected <-chan struct{}) toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{UpdateFunc: func(oldObj, newObj any) {
		if !closed(elected) {
			return
		}
		o, ok1 := oldObj.(*v1alpha1.VirtualMachine)
		n, ok2 := newObj.(*v1alpha1.VirtualMachine)
		if !ok1 || !ok2 {
			return
		}
		if ls := newShutdown(o, n); ls != nil {
			VMShutdowns.WithLabelValues(orUnknown(string(n.Spec.RunPolicy)), orUnknown(string(ls.Source))).Inc()
		}
	}}
}

// newShutdown is the shutdown n records that o did not, if any.
func newShutdown(o, n *v1alpha1.VirtualMachine) *v1alpha1.Shutdown {
	ls := n.Status.LastShutdown
	if ls == nil || ls.VMIUID == "" {
		return nil
	}
	if prev := o.Status.LastShutdown; prev != nil && prev.VMIUID == ls.VMIUID {
		return nil
	}
	return ls
}
