package vm

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
