package cli

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// The history is printed in the order given (newest first), one row each.
func TestPrintShutdownHistory(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-d)} }
	var b bytes.Buffer
	printShutdownHistory(&b, []v1alpha1.Shutdown{
		{Time: at(2 * time.Minute), Source: "guest-reset", Reason: "guest-reset", Action: v1alpha1.ShutdownRestarted, VMIUID: "uid-3"},
		{Time: at(3 * time.Hour), Source: "crash", Reason: "the launcher pod is gone", Action: v1alpha1.ShutdownRestartAfterBackoff},
		{Source: "user"},
	}, now)
	want := "Shutdown history (newest first):\n" +
		"  TIME                           SOURCE       REASON                    ACTION               VMI\n" +
		"  2026-11-25T11:58:00Z (2m ago)  guest-reset  guest-reset               Restarted            uid-3\n" +
		"  2026-11-25T09:00:00Z (3h ago)  crash        the launcher pod is gone  RestartAfterBackoff  <none>\n" +
		"  <unknown>                      user         <none>                    <none>               <none>\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestShutdownHistory(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	if h := shutdownHistory(vm); len(h) != 0 {
		t.Errorf("no shutdown: got %v", h)
	}
	ts := metav1.Now()
	last := v1alpha1.Shutdown{Source: v1alpha1.ShutdownGuestShutdown, Reason: "guest-shutdown", Time: &ts, VMIUID: "u"}
	// Written by an operator from before shutdownHistory: lastShutdown alone.
	vm.Status.LastShutdown = &last
	if h := shutdownHistory(vm); !reflect.DeepEqual(h, []v1alpha1.Shutdown{last}) {
		t.Errorf("lastShutdown only: got %v", h)
	}
	older := v1alpha1.Shutdown{Source: v1alpha1.ShutdownCrash, VMIUID: "t"}
	vm.Status.ShutdownHistory = []v1alpha1.Shutdown{last, older}
	if h := shutdownHistory(vm); !reflect.DeepEqual(h, vm.Status.ShutdownHistory) {
		t.Errorf("history: got %v", h)
	}
}

// Operations are listed newest first (then by name, descending, within a second), at most maxOperations.
func TestPrintStatusOperations(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	op := func(name string, age time.Duration, typ v1alpha1.VirtualMachineOperationType, phase v1alpha1.VirtualMachineOperationPhase) v1alpha1.VirtualMachineOperation {
		return v1alpha1.VirtualMachineOperation{
			ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(now.Add(-age))},
			Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: "web", Type: typ},
			Status:     v1alpha1.VirtualMachineOperationStatus{Phase: phase},
		}
	}
	ops := []v1alpha1.VirtualMachineOperation{
		op("web-start-aaaaa", time.Hour, v1alpha1.OperationStart, v1alpha1.OperationCompleted),
		op("web-restart-ccccc", time.Minute, v1alpha1.OperationRestart, v1alpha1.OperationInProgress),
		op("web-stop-bbbbb", 2*time.Hour, v1alpha1.OperationStop, v1alpha1.OperationCompleted),
		op("web-restart-aaaaa", time.Minute, v1alpha1.OperationRestart, v1alpha1.OperationPending),
		op("web-restart-ddddd", 3*time.Hour, v1alpha1.OperationRestart, v1alpha1.OperationCompleted),
		op("web-restart-eeeee", 4*time.Hour, v1alpha1.OperationRestart, v1alpha1.OperationCompleted),
	}
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyManual}}
	var b bytes.Buffer
	printStatus(&b, vm, ops, nil, now)
	want := "Operations (newest first):\n" +
		"  NAME               TYPE     FORCE  PHASE       REASON  AGE\n" +
		"  web-restart-ccccc  Restart  false  InProgress          60s\n" +
		"  web-restart-aaaaa  Restart  false  Pending             60s\n" +
		"  web-start-aaaaa    Start    false  Completed           60m\n" +
		"  web-stop-bbbbb     Stop     false  Completed           120m\n" +
		"  web-restart-ddddd  Restart  false  Completed           3h\n" +
		"  (1 older not shown: kubectl get vmop)\n"
	if got := b.String(); !bytes.HasSuffix([]byte(got), []byte(want)) {
		t.Errorf("got\n%s\nwant it to end with\n%s", got, want)
	}

	b.Reset()
	printStatus(&b, vm, nil, errors.New("forbidden"), now)
	if want := "Operations (newest first):\n  <cannot list: forbidden>\n"; !bytes.HasSuffix(b.Bytes(), []byte(want)) {
		t.Errorf("got\n%s\nwant it to end with\n%s", b.String(), want)
	}
}

// A VM waiting for a start slot shows its place; one that does not wait shows no such line.
func TestPrintStatusStartQueue(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"}}
	vm.Spec.RunPolicy, vm.Spec.StartOrder = v1alpha1.RunPolicyAlwaysOn, 2
	vm.Status.Phase, vm.Status.StartQueuePosition = v1alpha1.VirtualMachinePending, 3
	var b bytes.Buffer
	printStatus(&b, vm, nil, nil, time.Now())
	if want := "Start queue:      place 3 (waiting for a start slot; spec.startOrder 2)\n"; !bytes.Contains(b.Bytes(), []byte(want)) {
		t.Errorf("got\n%s\nwant a line %q", b.String(), want)
	}
	vm.Status.StartQueuePosition = 0
	b.Reset()
	printStatus(&b, vm, nil, nil, time.Now())
	if bytes.Contains(b.Bytes(), []byte("Start queue")) {
		t.Errorf("a VM that does not wait shows a start queue:\n%s", b.String())
	}
}
