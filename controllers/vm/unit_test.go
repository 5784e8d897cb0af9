package vm

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

func TestWithHookSidecar(t *testing.T) {
	const img = "example/hook:1"
	got, err := withHookSidecar("", img)
	if err != nil || got != `[{"image":"example/hook:1","imagePullPolicy":"IfNotPresent"}]` {
		t.Fatalf("empty: got %q, %v", got, err)
	}
	user := `[{"image":"user/sidecar:2","args":["--x"]}]`
	got, err = withHookSidecar(user, img)
	if err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(got), &list); err != nil || len(list) != 2 || list[0]["image"] != "user/sidecar:2" || list[1]["image"] != img {
		t.Fatalf("user's sidecar must be kept and ours appended: %s", got)
	}
	again, _ := withHookSidecar(got, img)
	if again != got {
		t.Fatalf("adding twice changed the value: %s", again)
	}
	if _, err := withHookSidecar("{bad", img); err == nil {
		t.Fatal("malformed annotation accepted")
	}
}

func TestApplyObjectDropsNullsAndStatus(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "b", UID: "u"}}
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{}
	kv, err := desiredKubeVirtVM(vm, kvv1.RunStrategyManual, "")
	if err != nil {
		t.Fatal(err)
	}
	u, err := applyObject(kv)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Object["status"]; ok {
		t.Error("status must not be applied")
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch t2 := v.(type) {
		case nil:
			t.Errorf("null at %s", path)
		case map[string]any:
			for k, e := range t2 {
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range t2 {
				walk(path+"[]", e)
			}
		}
	}
	walk("", u.Object)
	if rs, _, _ := unstructuredString(u.Object, "spec", "runStrategy"); rs != "Manual" {
		t.Errorf("runStrategy = %q", rs)
	}
}

func unstructuredString(m map[string]any, path ...string) (string, bool, error) {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = mm[p]
	}
	s, ok := cur.(string)
	return s, ok, nil
}

func TestTerminationMessages(t *testing.T) {
	msg := `{"event":"SHUTDOWN","guest":true,"reason":"guest-reset"}`
	running := corev1.ContainerStatus{Name: "compute", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	terminated := corev1.ContainerStatus{Name: "hook-sidecar-0", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: msg}}}
	restarted := corev1.ContainerStatus{Name: "hook-sidecar-0", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: msg}}}

	cases := []struct {
		name     string
		pod      corev1.Pod
		wantMsgs int
		wantDone bool
	}{
		{"all terminated", corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{terminated}}}, 1, true},
		{"compute still running", corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running, terminated}}}, 1, false},
		{"last terminated state counts", corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{restarted}}}, 1, false},
		{"pod phase Failed is done", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{running}}}, 0, true},
		{"no statuses yet", corev1.Pod{}, 0, false},
	}
	for _, c := range cases {
		msgs, done := terminationMessages(&c.pod)
		if len(msgs) != c.wantMsgs || done != c.wantDone {
			t.Errorf("%s: got %d messages, done=%v; want %d, %v", c.name, len(msgs), done, c.wantMsgs, c.wantDone)
		}
	}
}

func TestPhaseFor(t *testing.T) {
	cases := map[kvv1.VirtualMachinePrintableStatus]v1alpha1.VirtualMachinePhase{
		kvv1.VirtualMachineStatusStopped:          v1alpha1.VirtualMachineStopped,
		kvv1.VirtualMachineStatusProvisioning:     v1alpha1.VirtualMachineStarting,
		kvv1.VirtualMachineStatusStarting:         v1alpha1.VirtualMachineStarting,
		kvv1.VirtualMachineStatusRunning:          v1alpha1.VirtualMachineRunning,
		kvv1.VirtualMachineStatusPaused:           v1alpha1.VirtualMachineRunning,
		kvv1.VirtualMachineStatusStopping:         v1alpha1.VirtualMachineStopping,
		kvv1.VirtualMachineStatusTerminating:      v1alpha1.VirtualMachineTerminating,
		kvv1.VirtualMachineStatusCrashLoopBackOff: v1alpha1.VirtualMachinePending,
		kvv1.VirtualMachineStatusUnschedulable:    v1alpha1.VirtualMachinePending,
		"":                                        v1alpha1.VirtualMachineStopped,
	}
	for ps, want := range cases {
		if got := phaseFor(&kvv1.VirtualMachine{Status: kvv1.VirtualMachineStatus{PrintableStatus: ps}}); got != want {
			t.Errorf("phaseFor(%q) = %s, want %s", ps, got, want)
		}
	}
	if got := phaseFor(nil); got != v1alpha1.VirtualMachinePending {
		t.Errorf("phaseFor(nil) = %s", got)
	}
}

func TestWriteTracker(t *testing.T) {
	var w writeTracker
	key := types.NamespacedName{Namespace: "ns", Name: "vm"}
	if w.behind(key, "5") {
		t.Fatal("no write recorded, yet behind")
	}
	w.wrote(key, "5")
	if !w.behind(key, "5") {
		t.Fatal("cache still at the replaced version must read as behind")
	}
	if w.behind(key, "7") {
		t.Fatal("a newer version must read as caught up")
	}
	if w.behind(key, "5") {
		t.Fatal("once caught up, the write is forgotten")
	}
	w.wrote(key, "") // created: absent from the cache until the watch brings it
	if !w.behind(key, "") {
		t.Fatal("a created object missing from the cache must read as behind")
	}
	w.m.Store(key, ownWrite{replaced: "", at: time.Now().Add(-cacheCatchUp)})
	if w.behind(key, "") {
		t.Fatal("a write the cache never showed must not hold passes back past cacheCatchUp")
	}
}

func TestRestartDone(t *testing.T) {
	const old = "old-uid"
	vmi := func(uid string, phase kvv1.VirtualMachineInstancePhase, deleting bool) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Status: kvv1.VirtualMachineInstanceStatus{Phase: phase}}
		if deleting {
			v.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		}
		return v
	}
	kv := func(printable kvv1.VirtualMachinePrintableStatus, startPending bool) *kvv1.VirtualMachine {
		k := &kvv1.VirtualMachine{Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual)},
			Status: kvv1.VirtualMachineStatus{PrintableStatus: printable}}
		if startPending {
			k.Status.StateChangeRequests = []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}}
		}
		return k
	}
	halted := kv(kvv1.VirtualMachineStatusStopped, true)
	halted.Spec.RunStrategy = ptr.To(kvv1.RunStrategyHalted)
	cases := []struct {
		name string
		kv   *kvv1.VirtualMachine
		vmi  *kvv1.VirtualMachineInstance
		want bool
	}{
		{"ended VMI still there", kv(kvv1.VirtualMachineStatusStopped, true), vmi(old, kvv1.Succeeded, false), false},
		{"ended VMI being deleted, start pending", kv(kvv1.VirtualMachineStatusStopped, true), vmi(old, kvv1.Succeeded, true), false},
		{"ended VMI being deleted, no start pending", kv(kvv1.VirtualMachineStatusStopped, false), vmi(old, kvv1.Succeeded, true), true},
		{"no VMI, start pending", kv(kvv1.VirtualMachineStatusStopped, true), nil, false},
		{"no VMI, no start pending", kv(kvv1.VirtualMachineStatusStopped, false), nil, true},
		{"new VMI scheduling", kv(kvv1.VirtualMachineStatusStarting, false), vmi("new", kvv1.Scheduling, false), false},
		{"new VMI, KubeVirt VM not updated yet", kv(kvv1.VirtualMachineStatusStopped, false), vmi("new", kvv1.Scheduled, false), false},
		{"new VMI running", kv(kvv1.VirtualMachineStatusRunning, false), vmi("new", kvv1.Running, false), true},
		{"new VMI unschedulable", kv(kvv1.VirtualMachineStatusUnschedulable, false), vmi("new", kvv1.Scheduling, false), true},
		{"new VMI ended already", kv(kvv1.VirtualMachineStatusStarting, false), vmi("new", kvv1.Failed, false), true},
		{"policy changed to AlwaysOff, ended VMI still there", halted, vmi(old, kvv1.Succeeded, false), true},
		{"policy changed to AlwaysOff, start request never served", halted, nil, true},
		{"KubeVirt VM gone", nil, nil, true},
	}
	for _, c := range cases {
		if got := restartDone(old, c.kv, c.vmi); got != c.want {
			t.Errorf("%s: restartDone = %v, want %v", c.name, got, c.want)
		}
	}
}
