package vm

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/internal/shutdown"
	"github.com/runpolicy/runpolicy/internal/startgate"
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
	// A user's entry naming runpolicy's image stays the user's: runpolicy's own is appended after it, last.
	copied, _ := withHookSidecar(`[{"image":"example/hook:1"}]`, img)
	if ourSidecarContainer(copied, img) != "hook-sidecar-1" {
		t.Fatalf("runpolicy's entry must be the last one: %s", copied)
	}
	if _, err := withHookSidecar("{bad", img); err == nil {
		t.Fatal("malformed annotation accepted")
	}
}

func TestApplyObjectDropsNullsAndStatus(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "b", UID: "u"}}
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{}
	kv, err := desiredKubeVirtVM(vm, kvv1.RunStrategyManual, "", false)
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
	if rs, _, _ := unstructured.NestedString(u.Object, "spec", "runStrategy"); rs != "Manual" {
		t.Errorf("runStrategy = %q", rs)
	}
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
		msgs, done := terminationMessages(&c.pod, "hook-sidecar-0")
		if len(msgs) != c.wantMsgs || done != c.wantDone {
			t.Errorf("%s: got %d messages, done=%v; want %d, %v", c.name, len(msgs), done, c.wantMsgs, c.wantDone)
		}
	}
}

// Only runpolicy's own sidecar container is read: compute, a user's sidecar or a user's entry reusing runpolicy's
// image can write any termination message.
func TestTerminationMessagesOnlyOurs(t *testing.T) {
	forged := `{"event":"SHUTDOWN","guest":true,"reason":"guest-reset"}`
	real := `{"event":"SHUTDOWN","guest":true,"reason":"guest-shutdown"}`
	term := func(name, msg string) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: msg}}}
	}
	pod := &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		term("compute", forged), term("hook-sidecar-0", forged), term("hook-sidecar-1", real)}}}
	msgs, done := terminationMessages(pod, "hook-sidecar-1")
	if len(msgs) != 1 || msgs[0] != real || !done {
		t.Fatalf("got %q, done=%v; want only hook-sidecar-1's message", msgs, done)
	}
	if msgs, _ := terminationMessages(pod, ""); len(msgs) != 0 {
		t.Fatalf("no sidecar of runpolicy's: no message may be read, got %q", msgs)
	}
}

func TestOurSidecarContainer(t *testing.T) {
	const img = "registry.example:5000/runpolicy/hook-sidecar:v2"
	cases := map[string]string{
		``:                     "",
		`[{"image":"user/x"}]`: "",
		`[{"image":"registry.example:5000/runpolicy/hook-sidecar:v2"}]`:                    "hook-sidecar-0",
		`[{"image":"user/x"},{"image":"registry.example:5000/runpolicy/hook-sidecar:v1"}]`: "hook-sidecar-1", // started before an upgrade
		`[{"image":"registry.example:5000/runpolicy/hook-sidecar@sha256:ab"}]`:             "hook-sidecar-0",
		`[{"image":"registry.example:5000/runpolicy/hook-sidecar:v2"},{"image":"user/x"}]`: "", // not last: a user's
		`not json`: "",
		`[{"image":"registry.example:5000/runpolicy/hook-sidecar-evil:v2"}]`: "",
	}
	for ann, want := range cases {
		if got := ourSidecarContainer(ann, img); got != want {
			t.Errorf("ourSidecarContainer(%s) = %q, want %q", ann, got, want)
		}
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

// KubeVirt's vm.kubevirt.io/name label holds the VMI's hostname, not its name: the pod maps to its VMI's VM by
// its controller owner.
func TestLauncherPodVM(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "virt-launcher-web.prod-abcde",
		Labels: map[string]string{"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": "web", "kubevirt.io/created-by": "uid-1"},
		OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "ConfigMap", Name: "other"},
			{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachineInstance", Name: "web.prod", UID: "uid-1", Controller: ptr.To(true)},
		}}}
	got := launcherPodVM(t.Context(), pod)
	if len(got) != 1 || got[0].Namespace != "ns" || got[0].Name != "web.prod" {
		t.Fatalf("launcherPodVM = %v, want ns/web.prod (the VMI's name)", got)
	}
	pod.OwnerReferences = pod.OwnerReferences[:1]
	if got := launcherPodVM(t.Context(), pod); len(got) != 0 {
		t.Fatalf("a pod no VMI controls must map to no VM, got %v", got)
	}
}

func TestRebootsStayInGuest(t *testing.T) {
	vmi := &kvv1.VirtualMachineInstance{}
	if !rebootsStayInGuest(vmi) {
		t.Error("no sidecar, no rebootPolicy: QEMU reboots in place")
	}
	vmi.Annotations = map[string]string{AnnotationHookSidecars: `[{"image":"any"}]`}
	if rebootsStayInGuest(vmi) {
		t.Error("any hook sidecar may end the VMI on a reboot")
	}
	vmi.Annotations = nil
	vmi.Spec.Domain.RebootPolicy = ptr.To(kvv1.RebootPolicyTerminate)
	if rebootsStayInGuest(vmi) {
		t.Error("rebootPolicy Terminate ends the VMI on a reboot")
	}
}

func TestDesiredKubeVirtVMRebootPolicy(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "b", UID: "u"}}
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{}
	kv, err := desiredKubeVirtVM(vm, kvv1.RunStrategyAlways, "", true)
	if err != nil || kv.Spec.Template.Spec.Domain.RebootPolicy == nil || *kv.Spec.Template.Spec.Domain.RebootPolicy != kvv1.RebootPolicyTerminate {
		t.Fatalf("rebootPolicy not set: %v", err)
	}
	if _, ok := kv.Spec.Template.ObjectMeta.Annotations[AnnotationHookSidecars]; ok {
		t.Fatal("no hook image: no sidecar annotation")
	}
	if vm.Spec.Template.Spec.Domain.RebootPolicy != nil {
		t.Fatal("the user's VM must not be changed")
	}
	if TemplateHash(vm.Spec.Template) != kv.Spec.Template.ObjectMeta.Annotations[AnnotationTemplateHash] {
		t.Fatal("the template hash is the user's template's")
	}
}

// The cache's copy of a VM must not grow with what users store in its template.
func TestTrimForCache(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Name: "big", Annotations: map[string]string{
		corev1.LastAppliedConfigAnnotation: strings.Repeat("x", 1<<20), "team": "a"}}}
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	vm.Spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{}
	vm.Spec.Template.Spec.Domain.RebootPolicy = ptr.To(kvv1.RebootPolicyTerminate)
	vm.Spec.Template.ObjectMeta.Annotations = map[string]string{"cloud-init": strings.Repeat("y", 1<<20)}
	vm.Spec.DataVolumeTemplates = []kvv1.DataVolumeTemplateSpec{{ObjectMeta: metav1.ObjectMeta{Name: "disk"}}}
	full := vm.DeepCopy()

	TrimForCache(vm)
	b, _ := json.Marshal(vm)
	if len(b) > 2048 {
		t.Fatalf("trimmed VM is %d bytes: %s", len(b), b[:200])
	}
	if specHashOf(vm) != SpecHash(&full.Spec) || templateHashOf(vm) != TemplateHash(full.Spec.Template) {
		t.Fatal("the hashes must be those of the full spec and template")
	}
	if vm.Spec.RunPolicy != v1alpha1.RunPolicyManual || userRebootPolicy(vm) == nil || vm.Annotations["team"] != "a" || !trimmed(vm) {
		t.Fatalf("what decisions read must stay: %+v", vm)
	}
	again := vm.DeepCopy()
	TrimForCache(again)
	if specHashOf(again) != specHashOf(vm) {
		t.Fatal("trimming twice must not change the hashes")
	}
	if trimmed(full) || specHashOf(full) != SpecHash(&full.Spec) || templateHashOf(full) != TemplateHash(full.Spec.Template) {
		t.Fatal("an untrimmed VM hashes its own spec")
	}
}

func TestAgreed(t *testing.T) {
	reset, off := shutdown.CauseGuestReset, shutdown.CauseGuestShutdown
	for _, c := range []struct {
		in   []shutdown.Cause
		want shutdown.Cause
	}{
		{nil, shutdown.CauseUnknown},
		{[]shutdown.Cause{reset}, reset},
		{[]shutdown.Cause{off, off}, off},
		{[]shutdown.Cause{off, reset}, shutdown.CauseUnknown}, // a forged pod among the VMI's: never guessed
	} {
		if got := agreed(c.in); got != c.want {
			t.Errorf("agreed(%v) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestForeignFields(t *testing.T) {
	want := map[string]any{"runStrategy": "Manual", "template": map[string]any{"spec": map[string]any{
		"domain":  map[string]any{"devices": map[string]any{"disks": []any{map[string]any{"name": "root"}}}},
		"volumes": []any{map[string]any{"name": "root"}}}}}
	live := runtime.DeepCopyJSON(want)
	tmpl := live["template"].(map[string]any)["spec"].(map[string]any)
	tmpl["domain"].(map[string]any)["firmware"] = map[string]any{"uuid": "u-1", "serial": "s-1"}
	tmpl["domain"].(map[string]any)["machine"] = map[string]any{"type": "q35"}
	tmpl["architecture"] = "amd64"
	tmpl["terminationGracePeriodSeconds"] = nil
	live["template"].(map[string]any)["metadata"] = map[string]any{"annotations": map[string]any{"kubevirt.io/pci-topology-version": "v3"}}
	if got := foreignFields(want, live); len(got) != 0 {
		t.Fatalf("KubeVirt's own defaults are not foreign: %v", got)
	}
	tmpl["nodeSelector"] = map[string]any{"pool": "gpu"}
	tmpl["volumes"] = append(tmpl["volumes"].([]any), map[string]any{"name": "stolen", "secret": map[string]any{"secretName": "s"}})
	tmpl["domain"].(map[string]any)["devices"].(map[string]any)["disks"].([]any)[0].(map[string]any)["bootOrder"] = int64(1)
	got := foreignFields(want, live)
	wantPaths := []string{"spec.template.spec.domain.devices.disks.0.bootOrder", "spec.template.spec.nodeSelector.pool", "spec.template.spec.volumes"}
	if strings.Join(got, ",") != strings.Join(wantPaths, ",") {
		t.Fatalf("foreignFields = %v, want %v", got, wantPaths)
	}
	back := revertedSpec(want, live)
	if f := foreignFields(want, back); len(f) != 0 {
		t.Fatalf("the reverted spec still has foreign fields: %v", f)
	}
	if v, _, _ := unstructured.NestedFieldNoCopy(back, "template", "spec", "domain", "firmware", "uuid"); v != "u-1" {
		t.Fatalf("KubeVirt's firmware UUID must be kept, got %v", v)
	}
	if v, _, _ := unstructured.NestedFieldNoCopy(back, "template", "metadata", "annotations", "kubevirt.io/pci-topology-version"); v != "v3" {
		t.Fatalf("KubeVirt's template annotations must be kept, got %v", v)
	}
	if _, ok, _ := unstructured.NestedFieldNoCopy(want, "template", "spec", "domain", "firmware"); ok {
		t.Fatal("revertedSpec must not change its input")
	}
}

// A hook-sidecar annotation KubeVirt cannot turn into containers is refused before anything is applied, with or
// without runpolicy's own sidecar: KubeVirt would accept the VM and leave its VMI Pending.
func TestHookSidecarAnnotationChecked(t *testing.T) {
	for _, ok := range []string{
		`[]`,
		`[{"image":"user/sidecar:2","args":["--x"]}]`,
		`[{"args":["--version","v1alpha2"],"configMap":{"name":"hook","key":"my_script.sh","hookPath":"/usr/bin/onDefineDomain"}}]`,
		`[{"image":"a","command":["/bin/sh"],"imagePullPolicy":"Always","downwardAPI":"metadata"}]`,
	} {
		if err := checkHookSidecars(ok); err != nil {
			t.Errorf("%s: refused: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		`{"image":"x"}`:                "not a JSON list",
		`[1,null,"x"]`:                 "entry 0 is 1, not an object",
		`[null]`:                       "entry 0 is null, not an object",
		`[{"image":"a"},"x"]`:          "entry 1 is \"x\", not an object",
		`[{"image":"a","args":"--x"}]`: "entry 0: json: cannot unmarshal string",
		`[{"image":7}]`:                "entry 0: json: cannot unmarshal number",
		`[{"args":["--x"]}]`:           "entry 0 names no image",
	} {
		err := checkHookSidecars(bad)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", bad, err, want)
		}
	}
	vm := &v1alpha1.VirtualMachine{Spec: v1alpha1.VirtualMachineSpec{VirtualMachineSpec: kvv1.VirtualMachineSpec{
		Template: &kvv1.VirtualMachineInstanceTemplateSpec{ObjectMeta: metav1.ObjectMeta{
			Annotations: map[string]string{AnnotationHookSidecars: `[1,null,"x"]`}}}}}}
	for _, hook := range []string{"", "example/hook:1"} {
		if _, err := desiredKubeVirtVM(vm, kvv1.RunStrategyManual, hook, false); err == nil {
			t.Errorf("hook image %q: a malformed user annotation was applied", hook)
		}
	}
}

// A VM waiting for a start slot says which VMs hold the slots, up to startgate.ShownHolders and how many more.
func TestWaitForStartNamesHolders(t *testing.T) {
	held := []types.NamespacedName{{Namespace: "a", Name: "x"}, {Namespace: "b", Name: "y"}, {Namespace: "c", Name: "z"}}
	cases := []struct {
		v    startgate.Verdict
		want string
	}{
		{startgate.Verdict{Place: 2, InUse: 5, Max: 5, Holders: held},
			"1 VM(s) ahead in the queue; at most 5 VMs start at once (the operator's --max-concurrent-starts), " +
				"starting now: a/x, b/y, c/z and 2 more."},
		{startgate.Verdict{Place: 1, InUse: 1, Max: 1, Holders: held[:1]}, "--max-concurrent-starts), starting now: a/x."},
	}
	for _, c := range cases {
		vm := &v1alpha1.VirtualMachine{}
		waitForStart(vm, c.v, nil, true)
		ready := meta.FindStatusCondition(vm.Status.Conditions, v1alpha1.ConditionReady)
		if ready == nil || !strings.Contains(ready.Message, c.want) || vm.Status.StartQueuePosition != int32(c.v.Place) {
			t.Errorf("%+v: Ready %+v, place %d; want a message with %q", c.v, ready, vm.Status.StartQueuePosition, c.want)
		}
	}
}

// A recorded restart needs a start slot while its ended VMI is there, also before virt-controller has seen the VMI
// end (its finalizer still on it): status reads the VM Starting then, and without asking the VM would take a slot
// past the cap as a start made without the gate.
func TestRestartNeedsSlot(t *testing.T) {
	const ended = "vmi-1"
	vmi := func(uid string, phase kvv1.VirtualMachineInstancePhase, opts ...func(*kvv1.VirtualMachineInstance)) *kvv1.VirtualMachineInstance {
		v := &kvv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Status: kvv1.VirtualMachineInstanceStatus{Phase: phase}}
		for _, o := range opts {
			o(v)
		}
		return v
	}
	unseen := func(v *kvv1.VirtualMachineInstance) { v.Finalizers = []string{kvv1.VirtualMachineControllerFinalizer} }
	deleting := func(v *kvv1.VirtualMachineInstance) { v.DeletionTimestamp = &metav1.Time{Time: time.Now()} }
	cases := []struct {
		name       string
		restarting string
		vmi        *kvv1.VirtualMachineInstance
		want       bool
	}{
		{"no restart recorded", "", vmi(ended, kvv1.Succeeded), false},
		{"recorded, the ended VMI there", ended, vmi(ended, kvv1.Succeeded), true},
		{"recorded, virt-controller has not seen the end yet", ended, vmi(ended, kvv1.Failed, unseen), true},
		{"recorded, KubeVirt deletes the ended VMI: it took the restart", ended, vmi(ended, kvv1.Succeeded, deleting), false},
		{"recorded, KubeVirt runs the new VMI", ended, vmi("vmi-2", kvv1.Scheduling), false},
		{"recorded, no VMI", ended, nil, false},
	}
	for _, c := range cases {
		vm := &v1alpha1.VirtualMachine{Status: v1alpha1.VirtualMachineStatus{RestartingVMIUID: c.restarting}}
		if got := restartNeedsSlot(vm, c.vmi); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// Under a cap on starts an AlwaysOn VM is rendered as AlwaysOnUntilStoppedManually is: runStrategy Always for its
// first start (which the start gate holds), then Manual, so that runpolicy makes, through the gate, every start
// after it. Without a cap it stays on Always.
func TestDesiredStrategyOfAlwaysOn(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOn}}
	onStrategy := func(rs kvv1.VirtualMachineRunStrategy) *kvv1.VirtualMachine {
		return &kvv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationRunPolicy: "AlwaysOn"}},
			Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(rs)}}
	}
	running := &kvv1.VirtualMachineInstance{Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Running}}
	failed := &kvv1.VirtualMachineInstance{Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Failed}}
	for _, c := range []struct {
		name   string
		kv     *kvv1.VirtualMachine
		vmi    *kvv1.VirtualMachineInstance
		capped bool
		want   kvv1.VirtualMachineRunStrategy
	}{
		{"new, no cap", nil, nil, false, kvv1.RunStrategyAlways},
		{"new, capped: its first start", nil, nil, true, kvv1.RunStrategyAlways},
		{"running on Always, no cap", onStrategy(kvv1.RunStrategyAlways), running, false, kvv1.RunStrategyAlways},
		{"running on Always, capped: moved to Manual", onStrategy(kvv1.RunStrategyAlways), running, true, kvv1.RunStrategyManual},
		{"failed on Manual, capped: runpolicy restarts it", onStrategy(kvv1.RunStrategyManual), failed, true, kvv1.RunStrategyManual},
		{"failed on Manual, cap removed: back to Always", onStrategy(kvv1.RunStrategyManual), failed, false, kvv1.RunStrategyAlways},
	} {
		if got, _ := desiredStrategy(vm, c.kv, c.vmi, c.capped); got != c.want {
			t.Errorf("%s: runStrategy %s, want %s", c.name, got, c.want)
		}
	}
}
