// Package metrics holds runpolicy's Prometheus metrics. They are registered on controller-runtime's registry, so
// the manager's metrics endpoint (--metrics-bind-address) serves them next to controller-runtime's own.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metric names.
const (
	VMRestartsName    = "runpolicy_vm_restarts_total"
	VMOPDurationName  = "runpolicy_vmop_duration_seconds"
	DegradedName      = "runpolicy_hook_sidecar_degraded"
	PodGuardName      = "runpolicy_launcher_pod_guard"
	StatusWriteName   = "runpolicy_vm_status_write_failures_total"
	labelPolicy       = "policy"
	labelReason       = "reason"
	labelType         = "type"
	labelResult       = "result"
	unknownLabelValue = "unknown"
)

var (
	// VMRestarts counts the restarts runpolicy asked KubeVirt for (start subresource accepted), by the VM's
	// runPolicy and the reason the previous VMI ended (status.lastShutdown.source: guest-reset, crash, unknown, …).
	// Restarts KubeVirt makes by itself (runPolicy AlwaysOn) are not runpolicy's and are not counted.
	VMRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: VMRestartsName,
		Help: "Restarts of VirtualMachines requested by runpolicy, by runPolicy and by why the previous VMI ended.",
	}, []string{labelPolicy, labelReason})

	// VMOPDuration observes how long finished VirtualMachineOperations took, from creation to completion, by type
	// (Start, Stop, Restart) and result (Completed, Failed).
	VMOPDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: VMOPDurationName,
		Help: "Time from creation to completion of VirtualMachineOperations, by type and result.",
		// 0.5 s … ~17 min: a Start or Stop takes seconds, a graceful Stop of a guest that ignores ACPI up to
		// KubeVirt's grace period (default 3 min), a waiting operation longer.
		Buckets: prometheus.ExponentialBuckets(0.5, 2, 12),
	}, []string{labelType, labelResult})

	// Degraded is 1 while runpolicy runs without its hook sidecar (KubeVirt's Sidecar feature gate off, or the
	// sidecar turned off): guest reboots then stay inside the guest and do not apply pending changes. The operator
	// logs the reason once per change; every affected VM says it in its RebootsApplyChanges condition.
	Degraded = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: DegradedName,
		Help: "1 while runpolicy cannot tell guest reboots from poweroffs because its hook sidecar is not used (see the VMs' RebootsApplyChanges condition).",
	})
)

func init() {
	crmetrics.Registry.MustRegister(VMRestarts, VMOPDuration, Degraded, PodGuard, StatusWriteFailures, VMShutdowns, state)
	// Counters by policy and reason start at 0, so that the first restart or shutdown of a kind shows as an
	// increase (a series born at 1 does not): the alerts on unknown shutdowns rely on it.
	for _, p := range knownPolicies {
		for _, r := range knownSources {
			VMRestarts.WithLabelValues(p, r)
			VMShutdowns.WithLabelValues(p, r)
		}
	}
}

// StatusWriteFailures counts the VM status writes the API server refused for a reason other than a conflict:
// TooLarge (the object is at etcd's size limit, which the VM's own status can then not report) or Other.
var StatusWriteFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: StatusWriteName,
	Help: "VirtualMachine status writes refused by the API server (not conflicts), by reason: TooLarge, Other.",
}, []string{labelReason})

// StatusWriteFailed counts one refused status write.
func StatusWriteFailed(reason string) { StatusWriteFailures.WithLabelValues(orUnknown(reason)).Inc() }

// PodGuard is 1 while the admission policy that lets only KubeVirt's virt-controller create launcher pods is
// installed, 0 while runpolicy runs unguarded: a forged pod controlled by a VMI could then decide whether a VM
// restarts. The operator logs each change once.
var PodGuard = prometheus.NewGauge(prometheus.GaugeOpts{
	Name: PodGuardName,
	Help: "1 while the launcher-pod admission policy is installed (only KubeVirt's virt-controller creates pods a VMI controls); 0: runpolicy runs unguarded.",
})

// LauncherPodGuard sets the launcher-pod guard gauge.
func LauncherPodGuard(guarded bool) {
	v := 0.0
	if guarded {
		v = 1
	}
	PodGuard.Set(v)
}

// SidecarDegraded sets the degraded-mode gauge.
func SidecarDegraded(degraded bool) {
	v := 0.0
	if degraded {
		v = 1
	}
	Degraded.Set(v)
}

// RestartRequested counts one restart of a VM with runPolicy policy whose VMI ended for reason.
func RestartRequested(policy, reason string) {
	VMRestarts.WithLabelValues(orUnknown(policy), orUnknown(reason)).Inc()
}

// OperationFinished observes a finished operation of type opType with result (its phase), created at created
// and finished at finished. A finish time before the creation (clock skew) counts as zero.
func OperationFinished(opType, result string, created, finished time.Time) {
	VMOPDuration.WithLabelValues(orUnknown(opType), orUnknown(result)).Observe(max(finished.Sub(created).Seconds(), 0))
}

func orUnknown(s string) string {
	if s == "" {
		return unknownLabelValue
	}
	return s
}
