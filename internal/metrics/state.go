package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// Names of the gauges the state collector computes at scrape time.
const (
	VMsName                     = "runpolicy_vms"
	VMsAwaitingRestartName      = "runpolicy_vms_awaiting_restart"
	VMsRebootsNotApplyingName   = "runpolicy_vms_reboots_not_applying_changes"
	VMOPsName                   = "runpolicy_vmops"
	VMAwaitingRestartSinceName  = "runpolicy_vm_awaiting_restart_since_timestamp_seconds"
	VMStatusRestartsName        = "runpolicy_vm_status_restarts_total"
	VMOPInProgressSinceName     = "runpolicy_vmop_in_progress_since_timestamp_seconds"
	labelPhase                  = "phase"
	labelNamespace              = "namespace"
	labelName                   = "name"
	labelVirtualMachine         = "virtual_machine"
	stateListTimeout            = 5 * time.Second
	collectorLoggerName         = "metrics"
	collectorListFailureMessage = "Listing from the cache for the state metrics failed; they are left out of this scrape"
)

// The gauges' descriptions. Cardinality: the aggregate ones have at most |policies|·|phases| (4·7),
// |policies|·|reasons| or |types|·|phases| (3·5) series; the per-object ones have one series per VM
// (runpolicy_vm_status_restarts_total), per VM with a pending change, and per operation InProgress (at most one per
// VM: a VM runs one operation at a time). docs/observability.md says why.
var (
	vmsDesc = prometheus.NewDesc(VMsName,
		"runpolicy VirtualMachines by runPolicy and status.phase (unknown: not reconciled yet).",
		[]string{labelPolicy, labelPhase}, nil)
	vmsAwaitingRestartDesc = prometheus.NewDesc(VMsAwaitingRestartName,
		"runpolicy VirtualMachines whose running VMI waits for a restart to apply the current spec "+
			"(condition AwaitingRestartToApplyConfiguration=True), by runPolicy and the condition's reason.",
		[]string{labelPolicy, labelReason}, nil)
	vmsRebootsNotApplyingDesc = prometheus.NewDesc(VMsRebootsNotApplyingName,
		"runpolicy VirtualMachines whose guest reboots do not apply pending changes (condition RebootsApplyChanges=False), "+
			"by runPolicy and the condition's reason: SidecarFeatureGateDisabled, KubeVirtNotFound, HookSidecarDisabled, "+
			"AwaitingNextStart (degraded mode) or UserRebootPolicy (the VM's own rebootPolicy: Reboot).",
		[]string{labelPolicy, labelReason}, nil)
	vmopsDesc = prometheus.NewDesc(VMOPsName,
		"VirtualMachineOperations by type and status.phase (unknown: not reconciled yet).",
		[]string{labelType, labelPhase}, nil)
	vmAwaitingRestartSinceDesc = prometheus.NewDesc(VMAwaitingRestartSinceName,
		"Since when (Unix seconds) a VM's running VMI waits for a restart to apply its spec: the lastTransitionTime of "+
			"AwaitingRestartToApplyConfiguration=True. Only VMs with a pending change have a series.",
		[]string{labelNamespace, labelName, labelPolicy}, nil)
	vmStatusRestartsDesc = prometheus.NewDesc(VMStatusRestartsName,
		"status.restartCount of each runpolicy VirtualMachine: the restarts runpolicy made after a guest reset or a failure.",
		[]string{labelNamespace, labelName}, nil)
	vmopInProgressSinceDesc = prometheus.NewDesc(VMOPInProgressSinceName,
		"Since when (Unix seconds) a VirtualMachineOperation is InProgress: status.signalSentTime, when KubeVirt accepted "+
			"its signal. Only operations InProgress have a series.",
		[]string{labelNamespace, labelName, labelType, labelVirtualMachine}, nil)
)

// stateCollector computes the state gauges at scrape time from a reader, normally the manager's informer cache, so
// they cost nothing between scrapes and cannot drift from the objects. Only the elected leader reports them: every
// replica has the same cache, and sums over replicas would count each VM once per replica.
type stateCollector struct {
	mu      sync.RWMutex
	reader  client.Reader
	elected <-chan struct{}
}

// state is registered once, on controller-runtime's registry (init in metrics.go); WatchState points it at a
// manager's cache.
var state = &stateCollector{}

// WatchState makes the state gauges read runpolicy's VirtualMachines and VirtualMachineOperations from reader (the
// manager's cache) while elected is closed (the manager's Elected(); nil reports always). A later call replaces
// the earlier one: the collector is registered once per process, managers may come and go (tests).
func WatchState(reader client.Reader, elected <-chan struct{}) {
	state.mu.Lock()
	defer state.mu.Unlock()
	state.reader, state.elected = reader, elected
}

// NewStateCollector returns a collector of the state gauges over reader, for tests and other registries.
func NewStateCollector(reader client.Reader) prometheus.Collector {
	return &stateCollector{reader: reader}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{vmsDesc, vmsAwaitingRestartDesc, vmsRebootsNotApplyingDesc, vmopsDesc,
		vmAwaitingRestartSinceDesc, vmStatusRestartsDesc, vmopInProgressSinceDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	reader, elected := c.reader, c.elected
	c.mu.RUnlock()
	if reader == nil || !closed(elected) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateListTimeout)
	defer cancel()
	log := ctrl.Log.WithName(collectorLoggerName)
	// Read only: the cache's own objects are not copied (5,000 VMs would be 5,000 copies per scrape).
	noCopy := client.UnsafeDisableDeepCopy
	vms := &v1alpha1.VirtualMachineList{}
	if err := reader.List(ctx, vms, noCopy); err != nil {
		log.Error(err, collectorListFailureMessage, "kind", "VirtualMachine")
	} else {
		collectVMs(ch, vms.Items)
	}
	ops := &v1alpha1.VirtualMachineOperationList{}
	if err := reader.List(ctx, ops, noCopy); err != nil {
		log.Error(err, collectorListFailureMessage, "kind", "VirtualMachineOperation")
	} else {
		collectOperations(ch, ops.Items)
	}
}

// closed tells whether ch is closed; a nil channel counts as closed (no leader election).
func closed(ch <-chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

type pair struct{ a, b string }

// The known label values: every combination of them is reported, zeros included, so that a series does not vanish
// when its last VM leaves it; other values (unknown: not reconciled yet) appear when seen.
var (
	knownPolicies = []string{string(v1alpha1.RunPolicyAlwaysOff), string(v1alpha1.RunPolicyAlwaysOn),
		string(v1alpha1.RunPolicyManual), string(v1alpha1.RunPolicyAlwaysOnUntilStoppedManually)}
	knownVMPhases = []string{string(v1alpha1.VirtualMachinePending), string(v1alpha1.VirtualMachineStarting),
		string(v1alpha1.VirtualMachineRunning), string(v1alpha1.VirtualMachineStopping),
		string(v1alpha1.VirtualMachineStopped), string(v1alpha1.VirtualMachineTerminating)}
	knownAwaitingReasons = []string{v1alpha1.ReasonChangesPending, v1alpha1.ReasonKubeVirtRestartFlag}
	// The reasons of RebootsApplyChanges=False (policy.RebootCondition).
	knownNotApplyingReasons = []string{policy.ReasonFeatureGateDisabled, policy.ReasonKubeVirtNotFound,
		policy.ReasonSidecarDisabled, policy.ReasonAwaitingNextStart, policy.ReasonUserRebootPolicy}
	knownOpTypes  = []string{string(v1alpha1.OperationStart), string(v1alpha1.OperationStop), string(v1alpha1.OperationRestart)}
	knownOpPhases = []string{string(v1alpha1.OperationPending), string(v1alpha1.OperationInProgress),
		string(v1alpha1.OperationCompleted), string(v1alpha1.OperationFailed)}
)

// zeros returns counts with every combination of as and bs at 0.
func zeros(as, bs []string) map[pair]int {
	m := make(map[pair]int, len(as)*len(bs))
	for _, a := range as {
		for _, b := range bs {
			m[pair{a, b}] = 0
		}
	}
	return m
}

func collectVMs(ch chan<- prometheus.Metric, vms []v1alpha1.VirtualMachine) {
	byPhase := zeros(knownPolicies, knownVMPhases)
	awaiting := zeros(knownPolicies, knownAwaitingReasons)
	notApplying := zeros(knownPolicies, knownNotApplyingReasons)
	for i := range vms {
		vm := &vms[i]
		p := orUnknown(string(vm.Spec.RunPolicy))
		byPhase[pair{p, orUnknown(string(vm.Status.Phase))}]++
		if c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionAwaitingRestart); c != nil && c.Status == metav1.ConditionTrue {
			awaiting[pair{p, orUnknown(c.Reason)}]++
			ch <- prometheus.MustNewConstMetric(vmAwaitingRestartSinceDesc, prometheus.GaugeValue, unixSeconds(c.LastTransitionTime),
				vm.Namespace, vm.Name, p)
		}
		if c := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionRebootsApplyChanges); c != nil && c.Status == metav1.ConditionFalse {
			notApplying[pair{p, orUnknown(c.Reason)}]++
		}
		ch <- prometheus.MustNewConstMetric(vmStatusRestartsDesc, prometheus.CounterValue, float64(vm.Status.RestartCount),
			vm.Namespace, vm.Name)
	}
	emit(ch, vmsDesc, byPhase)
	emit(ch, vmsAwaitingRestartDesc, awaiting)
	emit(ch, vmsRebootsNotApplyingDesc, notApplying)
}

func collectOperations(ch chan<- prometheus.Metric, ops []v1alpha1.VirtualMachineOperation) {
	byPhase := zeros(knownOpTypes, knownOpPhases)
	for i := range ops {
		op := &ops[i]
		byPhase[pair{orUnknown(string(op.Spec.Type)), orUnknown(string(op.Status.Phase))}]++
		if op.Status.Phase == v1alpha1.OperationInProgress {
			ch <- prometheus.MustNewConstMetric(vmopInProgressSinceDesc, prometheus.GaugeValue, inProgressSince(op),
				op.Namespace, op.Name, orUnknown(string(op.Spec.Type)), op.Spec.VirtualMachineName)
		}
	}
	emit(ch, vmopsDesc, byPhase)
}

// inProgressSince is when KubeVirt accepted the operation's signal; without a recorded time, when the SignalSent
// condition turned True, else when the operation was created.
func inProgressSince(op *v1alpha1.VirtualMachineOperation) float64 {
	if t := op.Status.SignalSentTime; t != nil {
		return unixSeconds(*t)
	}
	if c := meta.FindStatusCondition(op.Status.Conditions, v1alpha1.OperationConditionSignalSent); c != nil && c.Status == metav1.ConditionTrue {
		return unixSeconds(c.LastTransitionTime)
	}
	return unixSeconds(op.CreationTimestamp)
}

func unixSeconds(t metav1.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func emit(ch chan<- prometheus.Metric, desc *prometheus.Desc, counts map[pair]int) {
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n), k.a, k.b)
	}
}
