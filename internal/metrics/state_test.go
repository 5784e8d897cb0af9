package metrics

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func vmObj(ns, name string, p v1alpha1.RunPolicy, phase v1alpha1.VirtualMachinePhase, restarts int32, conds ...metav1.Condition) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1alpha1.VirtualMachineSpec{RunPolicy: p},
		Status:     v1alpha1.VirtualMachineStatus{Phase: phase, RestartCount: restarts, Conditions: conds},
	}
}

func cond(t string, s metav1.ConditionStatus, reason string, at time.Time) metav1.Condition {
	return metav1.Condition{Type: t, Status: s, Reason: reason, LastTransitionTime: metav1.Time{Time: at}}
}

func opObj(name, vm string, typ v1alpha1.VirtualMachineOperationType, phase v1alpha1.VirtualMachineOperationPhase, sent *time.Time) *v1alpha1.VirtualMachineOperation {
	op := &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name, CreationTimestamp: metav1.Time{Time: t0}},
		Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: vm, Type: typ},
		Status:     v1alpha1.VirtualMachineOperationStatus{Phase: phase},
	}
	if sent != nil {
		op.Status.SignalSentTime = &metav1.Time{Time: *sent}
	}
	return op
}

func fakeReader(t *testing.T, objs ...client.Object) client.Reader {
	t.Helper()
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
}

func TestStateCollector(t *testing.T) {
	sent := t0.Add(90 * time.Second)
	c := NewStateCollector(fakeReader(t,
		vmObj("a", "web", v1alpha1.RunPolicyManual, v1alpha1.VirtualMachineRunning, 3,
			cond(v1alpha1.ConditionAwaitingRestart, metav1.ConditionTrue, v1alpha1.ReasonChangesPending, t0),
			cond(v1alpha1.ConditionRebootsApplyChanges, metav1.ConditionFalse, "SidecarFeatureGateDisabled", t0)),
		vmObj("a", "db", v1alpha1.RunPolicyManual, v1alpha1.VirtualMachineRunning, 0,
			cond(v1alpha1.ConditionAwaitingRestart, metav1.ConditionFalse, v1alpha1.ReasonNoRestartRequired, t0),
			cond(v1alpha1.ConditionRebootsApplyChanges, metav1.ConditionTrue, "HookSidecar", t0)),
		// Unknown (a VMI runpolicy did not create) is not a pending change.
		vmObj("b", "old", v1alpha1.RunPolicyAlwaysOn, v1alpha1.VirtualMachineRunning, 0,
			cond(v1alpha1.ConditionAwaitingRestart, metav1.ConditionUnknown, v1alpha1.ReasonChangesPending, t0)),
		vmObj("b", "new", v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, "", 0),
		opObj("restart-web", "web", v1alpha1.OperationRestart, v1alpha1.OperationInProgress, &sent),
		opObj("stop-db", "db", v1alpha1.OperationStop, v1alpha1.OperationInProgress, nil),
		opObj("start-db", "db", v1alpha1.OperationStart, v1alpha1.OperationCompleted, nil),
		opObj("fresh", "db", v1alpha1.OperationStart, "", nil),
	))
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	want := `
# HELP runpolicy_vm_awaiting_restart_since_timestamp_seconds Since when (Unix seconds) a VM's running VMI waits for a restart to apply its spec: the lastTransitionTime of AwaitingRestartToApplyConfiguration=True. Only VMs with a pending change have a series.
# TYPE runpolicy_vm_awaiting_restart_since_timestamp_seconds gauge
runpolicy_vm_awaiting_restart_since_timestamp_seconds{name="web",namespace="a",policy="Manual"} 1.767323045e+09
# HELP runpolicy_vm_status_restarts_total status.restartCount of each runpolicy VirtualMachine: the restarts runpolicy made after a guest reset or a failure.
# TYPE runpolicy_vm_status_restarts_total counter
runpolicy_vm_status_restarts_total{name="db",namespace="a"} 0
runpolicy_vm_status_restarts_total{name="new",namespace="b"} 0
runpolicy_vm_status_restarts_total{name="old",namespace="b"} 0
runpolicy_vm_status_restarts_total{name="web",namespace="a"} 3
# HELP runpolicy_vmop_in_progress_since_timestamp_seconds Since when (Unix seconds) a VirtualMachineOperation is InProgress: status.signalSentTime, when KubeVirt accepted its signal. Only operations InProgress have a series.
# TYPE runpolicy_vmop_in_progress_since_timestamp_seconds gauge
runpolicy_vmop_in_progress_since_timestamp_seconds{name="restart-web",namespace="a",type="Restart",virtual_machine="web"} 1.767323135e+09
runpolicy_vmop_in_progress_since_timestamp_seconds{name="stop-db",namespace="a",type="Stop",virtual_machine="db"} 1.767323045e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), VMAwaitingRestartSinceName, VMStatusRestartsName,
		VMOPInProgressSinceName); err != nil {
		t.Error(err)
	}
	// The aggregates: every known combination is there, zeros included; unknown ones when seen.
	g := gather(t, c)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{VMsName, map[string]string{"policy": "Manual", "phase": "Running"}, 2},
		{VMsName, map[string]string{"policy": "AlwaysOn", "phase": "Running"}, 1},
		{VMsName, map[string]string{"policy": "AlwaysOnUntilStoppedManually", "phase": "unknown"}, 1},
		{VMsName, map[string]string{"policy": "AlwaysOff", "phase": "Stopped"}, 0},
		{VMsAwaitingRestartName, map[string]string{"policy": "Manual", "reason": "ChangesPendingRestart"}, 1},
		{VMsAwaitingRestartName, map[string]string{"policy": "AlwaysOn", "reason": "ChangesPendingRestart"}, 0},
		{VMsRebootsNotApplyingName, map[string]string{"policy": "Manual", "reason": "SidecarFeatureGateDisabled"}, 1},
		{VMsRebootsNotApplyingName, map[string]string{"policy": "Manual", "reason": "AwaitingNextStart"}, 0},
		{VMOPsName, map[string]string{"type": "Restart", "phase": "InProgress"}, 1},
		{VMOPsName, map[string]string{"type": "Start", "phase": "Completed"}, 1},
		{VMOPsName, map[string]string{"type": "Start", "phase": "unknown"}, 1},
		{VMOPsName, map[string]string{"type": "Stop", "phase": "Failed"}, 0},
	} {
		got, ok := g[key(tc.name, tc.labels)]
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (present %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if n := countFamily(g, VMsName); n != 4*6+1 {
		t.Errorf("%s has %d series, want 4 policies × 6 phases + 1 unknown", VMsName, n)
	}
	if n := countFamily(g, VMsRebootsNotApplyingName); n != 4*5 {
		t.Errorf("%s has %d series, want 4 policies × 5 reasons", VMsRebootsNotApplyingName, n)
	}
}

// A replica that does not lead reports no state: every replica's cache holds the same objects.
func TestStateCollectorOnlyWhileElected(t *testing.T) {
	elected := make(chan struct{})
	c := &stateCollector{reader: fakeReader(t, vmObj("a", "web", v1alpha1.RunPolicyManual, v1alpha1.VirtualMachineRunning, 1)), elected: elected}
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("not elected: %d series, want none", n)
	}
	close(elected)
	if n := testutil.CollectAndCount(c, VMStatusRestartsName); n != 1 {
		t.Errorf("elected: %d series of %s, want 1", n, VMStatusRestartsName)
	}
	// The package's collector, registered on controller-runtime's registry, reports nothing until WatchState.
	if n := testutil.CollectAndCount(state); n != 0 {
		t.Errorf("unwired: %d series, want none", n)
	}
}

func TestShutdownHandler(t *testing.T) {
	elected := make(chan struct{})
	h := ShutdownHandler(elected)
	ls := func(uid string, src v1alpha1.ShutdownSource) *v1alpha1.VirtualMachine {
		vm := vmObj("a", "web", v1alpha1.RunPolicyManual, v1alpha1.VirtualMachineStopped, 0)
		if uid != "" {
			vm.Status.LastShutdown = &v1alpha1.Shutdown{Source: src, VMIUID: uid}
		}
		return vm
	}
	unknown := VMShutdowns.WithLabelValues("Manual", "unknown")
	reset := VMShutdowns.WithLabelValues("Manual", "guest-reset")
	before, beforeReset := testutil.ToFloat64(unknown), testutil.ToFloat64(reset)
	h.OnUpdate(ls("", ""), ls("u1", v1alpha1.ShutdownUnknown)) // not the leader: not counted
	close(elected)
	h.OnAdd(ls("u1", v1alpha1.ShutdownUnknown), true)                                  // listed: history, not counted
	h.OnUpdate(ls("", ""), ls("u1", v1alpha1.ShutdownUnknown))                         // first shutdown
	h.OnUpdate(ls("u1", v1alpha1.ShutdownUnknown), ls("u1", v1alpha1.ShutdownUnknown)) // another status write
	h.OnUpdate(ls("u1", v1alpha1.ShutdownUnknown), ls("u2", v1alpha1.ShutdownGuestReset))
	if d := testutil.ToFloat64(unknown) - before; d != 1 {
		t.Errorf("unknown shutdowns counted %v, want 1", d)
	}
	if d := testutil.ToFloat64(reset) - beforeReset; d != 1 {
		t.Errorf("guest-reset shutdowns counted %v, want 1", d)
	}
}

// Every policy × reason of the counters exists from the start, at 0, so the first one shows as an increase.
func TestCountersStartAtZero(t *testing.T) {
	for _, name := range []string{VMShutdownsName, VMRestartsName} {
		if m := find(t, name, map[string]string{"policy": "AlwaysOff", "reason": "unknown"}); m == nil {
			t.Errorf("%s{AlwaysOff,unknown} is missing", name)
		}
	}
}

func key(name string, labels map[string]string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, l := range []string{"namespace", "name", "policy", "phase", "reason", "type"} {
		if v, ok := labels[l]; ok {
			b.WriteString("," + l + "=" + v)
		}
	}
	return b.String()
}

// gather collects c into name,label=value… → value.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			out[key(f.GetName(), labels)] = v
		}
	}
	return out
}

func countFamily(g map[string]float64, name string) int {
	n := 0
	for k := range g {
		if strings.HasPrefix(k, name+",") {
			n++
		}
	}
	return n
}

// BenchmarkCollectVMs measures one scrape's pass over 5,000 cached VMs (the cache's List, without copies, is not
// part of it).
func BenchmarkCollectVMs(b *testing.B) {
	vms := make([]v1alpha1.VirtualMachine, 5000)
	for i := range vms {
		vms[i] = *vmObj("ns", "vm-"+strconv.Itoa(i), v1alpha1.RunPolicyAlwaysOnUntilStoppedManually, v1alpha1.VirtualMachineRunning, int32(i%7),
			cond(v1alpha1.ConditionReady, metav1.ConditionTrue, "Running", t0),
			cond(v1alpha1.ConditionAwaitingRestart, metav1.ConditionStatus([]string{"True", "False"}[i%2]), v1alpha1.ReasonChangesPending, t0),
			cond(v1alpha1.ConditionRebootsApplyChanges, metav1.ConditionTrue, "HookSidecar", t0))
	}
	for b.Loop() {
		ch := make(chan prometheus.Metric, 8192)
		collectVMs(ch, vms)
		close(ch)
		for range ch {
		}
	}
}
