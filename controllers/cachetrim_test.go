package controllers

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/test/fixture"
)

func TestTrimLauncherPodKeepsTerminationMessages(t *testing.T) {
	now := metav1.Now()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "virt-launcher-vm-abcde", Namespace: "ns", UID: "p1", ResourceVersion: "7",
			DeletionTimestamp: &now, Labels: map[string]string{"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "vmi-uid"},
			Annotations:     map[string]string{"k8s.v1.cni.cncf.io/network-status": "[...]"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "VirtualMachineInstance", Name: "vm", UID: "vmi-uid", Controller: ptr.To(true)}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{NodeName: "node01", Containers: []corev1.Container{{Name: "compute", Image: "virt-launcher"}}},
		Status: corev1.PodStatus{Phase: corev1.PodFailed, PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "hook-sidecar-0", Image: "hook", ImageID: "sha256:x",
					State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: `{"reason":"guest-reset"}`}}},
				{Name: "compute", LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}},
			}},
	}
	out, err := trimLauncherPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Pod)
	if got.Name != "virt-launcher-vm-abcde" || got.UID != "p1" || got.ResourceVersion != "7" || got.DeletionTimestamp == nil ||
		got.Labels["kubevirt.io/created-by"] != "vmi-uid" || len(got.OwnerReferences) != 1 || got.Status.Phase != corev1.PodFailed {
		t.Fatalf("identity, labels, owners or phase lost: %+v", got)
	}
	if len(got.Status.ContainerStatuses) != 2 || got.Status.ContainerStatuses[0].State.Terminated.Message != `{"reason":"guest-reset"}` ||
		got.Status.ContainerStatuses[1].LastTerminationState.Terminated == nil {
		t.Fatalf("termination states lost: %+v", got.Status.ContainerStatuses)
	}
	if got.ManagedFields != nil || got.Annotations != nil || len(got.Spec.Containers) != 0 || got.Status.PodIP != "" ||
		got.Status.Conditions != nil || got.Status.ContainerStatuses[0].Image != "" {
		t.Fatalf("unused fields kept: %+v", got)
	}
}

func TestTrimKubeVirtVMKeepsStrategyAndStatus(t *testing.T) {
	kv := &kvv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "vm", Generation: 3, Annotations: map[string]string{
			"runpolicy.io/applied-hash": "h", corev1.LastAppliedConfigAnnotation: "{...}"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "VirtualMachine", UID: "u", Controller: ptr.To(true)}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "runpolicy"}}},
		Spec: kvv1.VirtualMachineSpec{RunStrategy: ptr.To(kvv1.RunStrategyManual),
			Template:            &kvv1.VirtualMachineInstanceTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}}},
			DataVolumeTemplates: []kvv1.DataVolumeTemplateSpec{{ObjectMeta: metav1.ObjectMeta{Name: "disk"}}}},
		Status: kvv1.VirtualMachineStatus{PrintableStatus: kvv1.VirtualMachineStatusStopped, Ready: true,
			StateChangeRequests: []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}},
			Conditions:          []kvv1.VirtualMachineCondition{{Type: kvv1.VirtualMachineRestartRequired}}},
	}
	out, _ := trimKubeVirtVM(kv)
	got := out.(*kvv1.VirtualMachine)
	if got.Spec.RunStrategy == nil || *got.Spec.RunStrategy != kvv1.RunStrategyManual || got.Generation != 3 ||
		got.Annotations["runpolicy.io/applied-hash"] != "h" || len(got.OwnerReferences) != 1 ||
		got.Status.PrintableStatus != kvv1.VirtualMachineStatusStopped || !got.Status.Ready ||
		len(got.Status.StateChangeRequests) != 1 || len(got.Status.Conditions) != 1 {
		t.Fatalf("fields the reconcilers read were lost: %+v", got)
	}
	if got.Spec.Template != nil || got.Spec.DataVolumeTemplates != nil || got.ManagedFields != nil ||
		got.Annotations[corev1.LastAppliedConfigAnnotation] != "" {
		t.Fatalf("template, DataVolume templates, managedFields or last-applied kept: %+v", got)
	}
}

func TestTrimVMIKeepsPhaseHistoryAndHash(t *testing.T) {
	now := metav1.Now()
	vmi := &kvv1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "vm", UID: "x", DeletionTimestamp: &now,
			Annotations: map[string]string{"runpolicy.io/template-hash": "h"},
			Finalizers:  []string{"example.com/user", kvv1.VirtualMachineControllerFinalizer, "foregroundDeleteVirtualMachine"}},
		Spec: kvv1.VirtualMachineInstanceSpec{Domain: kvv1.DomainSpec{CPU: &kvv1.CPU{Cores: 2}}},
		Status: kvv1.VirtualMachineInstanceStatus{Phase: kvv1.Failed,
			PhaseTransitionTimestamps: []kvv1.VirtualMachineInstancePhaseTransitionTimestamp{{Phase: kvv1.Failed, PhaseTransitionTimestamp: now}},
			Interfaces:                []kvv1.VirtualMachineInstanceNetworkInterface{{IP: "10.0.0.1"}}},
	}
	out, _ := trimVMI(vmi)
	got := out.(*kvv1.VirtualMachineInstance)
	if !got.IsFinal() || got.UID != "x" || got.DeletionTimestamp == nil || got.Annotations["runpolicy.io/template-hash"] != "h" ||
		len(got.Status.PhaseTransitionTimestamps) != 1 {
		t.Fatalf("fields the reconcilers read were lost: %+v", got)
	}
	// virt-controller's finalizer says whether it has seen the VMI end (policy.KubeVirtSawEnd); no other is kept.
	if !slices.Equal(got.Finalizers, []string{kvv1.VirtualMachineControllerFinalizer}) {
		t.Errorf("finalizers %v, want virt-controller's alone", got.Finalizers)
	}
	if got.Spec.Domain.CPU != nil || got.Status.Interfaces != nil {
		t.Fatalf("spec or interfaces kept: %+v", got)
	}
}

// userMeta is what a namespace user can store in any object's metadata, as the API server accepts it: 254 KiB of
// annotations (of the 256 KiB allowed), thousands of labels, finalizers, owner references.
func userMeta() metav1.ObjectMeta {
	m := metav1.ObjectMeta{Annotations: map[string]string{"user-data": strings.Repeat("a", 254<<10),
		corev1.LastAppliedConfigAnnotation: "{...}"}, Labels: map[string]string{}}
	for i := range 2000 {
		m.Labels[fmt.Sprintf("team.example.com/label-%04d", i)] = strings.Repeat("l", 63)
		m.Finalizers = append(m.Finalizers, fmt.Sprintf("example.com/finalizer-%04d", i))
		m.OwnerReferences = append(m.OwnerReferences, metav1.OwnerReference{Kind: "ConfigMap", Name: fmt.Sprintf("cm-%04d", i),
			UID: types.UID(fmt.Sprintf("uid-%04d", i))})
	}
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", FieldsV1: metav1.NewFieldsV1(strings.Repeat("f", 64<<10))}}
	return m
}

// cacheTransform is the transform CacheOptions installs for obj's type.
func cacheTransform(t *testing.T, obj client.Object) toolscache.TransformFunc {
	t.Helper()
	for o, by := range CacheOptions().ByObject {
		if reflect.TypeOf(o) == reflect.TypeOf(obj) {
			if by.Transform == nil {
				t.Fatalf("no transform for %T", obj)
			}
			return by.Transform
		}
	}
	t.Fatalf("%T is cached with the default transform only", obj)
	return nil
}

// The cached copy of every kind the reconcilers read keeps the annotations and labels they read and their
// controller, and nothing else users store in metadata, whatever its size.
func TestCacheTrimsUserMetadata(t *testing.T) {
	controller := metav1.OwnerReference{Kind: "VirtualMachine", Name: "vm", UID: "owner", Controller: ptr.To(true)}
	with := func(keep map[string]string, labels map[string]string) metav1.ObjectMeta {
		m := userMeta()
		m.Name, m.Namespace, m.UID, m.ResourceVersion = "vm", "ns", "u", "7"
		maps.Copy(m.Annotations, keep)
		maps.Copy(m.Labels, labels)
		m.OwnerReferences = append(m.OwnerReferences, controller)
		return m
	}
	hooks := `[{"image":"registry.example/hook:v1"}]`
	for _, c := range []struct {
		obj                 client.Object
		annotations, labels map[string]string
	}{
		{obj: &v1alpha1.VirtualMachine{ObjectMeta: with(nil, nil)}},
		{obj: &v1alpha1.VirtualMachineOperation{ObjectMeta: with(
			map[string]string{"runpolicy.io/target-vmi-uid": "x"}, map[string]string{"runpolicy.io/reason": "apply-changes"})}},
		{
			obj: &kvv1.VirtualMachine{ObjectMeta: with(
				map[string]string{vm.AnnotationRunPolicy: "Manual", vm.AnnotationAppliedHash: "h", vm.AnnotationAdopt: "true"},
				map[string]string{vm.LabelManagedBy: vm.ManagedByValue})},
			annotations: map[string]string{vm.AnnotationRunPolicy: "Manual", vm.AnnotationAppliedHash: "h", vm.AnnotationAdopt: "true"},
			labels:      map[string]string{vm.LabelManagedBy: vm.ManagedByValue},
		},
		{
			obj: &kvv1.VirtualMachineInstance{ObjectMeta: with(
				map[string]string{vm.AnnotationTemplateHash: "h", vm.AnnotationHookSidecars: hooks},
				map[string]string{"kubevirt.io/nodeName": "node01", "kubevirt.io/created-by": "vm-uid"})},
			annotations: map[string]string{vm.AnnotationTemplateHash: "h", vm.AnnotationHookSidecars: hooks},
		},
		{
			obj: &corev1.Pod{ObjectMeta: with(
				map[string]string{vm.AnnotationHookSidecars: hooks, "kubevirt.io/domain": "vm"},
				map[string]string{vm.LabelLauncher: vm.LauncherValue, vm.LabelCreatedBy: "vmi-uid", "vm.kubevirt.io/name": "vm"})},
			labels: map[string]string{vm.LabelLauncher: vm.LauncherValue, vm.LabelCreatedBy: "vmi-uid"},
		},
	} {
		t.Run(fmt.Sprintf("%T", c.obj), func(t *testing.T) {
			out, err := cacheTransform(t, c.obj)(c.obj)
			if err != nil {
				t.Fatal(err)
			}
			got := out.(client.Object)
			if got.GetName() != "vm" || got.GetNamespace() != "ns" || got.GetUID() != "u" || got.GetResourceVersion() != "7" {
				t.Fatalf("identity lost: %s/%s %s %s", got.GetNamespace(), got.GetName(), got.GetUID(), got.GetResourceVersion())
			}
			annotations := got.GetAnnotations()
			if _, isVM := got.(*v1alpha1.VirtualMachine); isVM {
				// The cache's own hashes (vm.TrimForCache), nothing of the user's.
				annotations = maps.Clone(annotations)
				delete(annotations, vm.AnnotationCachedSpecHash)
				delete(annotations, vm.AnnotationCachedTemplateHash)
			}
			if len(annotations) != len(c.annotations) || !maps.Equal(annotations, c.annotations) {
				t.Errorf("annotations: want %v, got %d keys %v", c.annotations, len(annotations), slices.Sorted(maps.Keys(annotations)))
			}
			if !maps.Equal(got.GetLabels(), c.labels) {
				t.Errorf("labels: want %v, got %d", c.labels, len(got.GetLabels()))
			}
			if owners := got.GetOwnerReferences(); len(owners) != 1 || owners[0] != controller {
				t.Errorf("want the controller reference only, got %d owner references", len(owners))
			}
			if got.GetFinalizers() != nil || got.GetManagedFields() != nil {
				t.Errorf("finalizers (%d) or managedFields (%d) kept", len(got.GetFinalizers()), len(got.GetManagedFields()))
			}
			b, _ := json.Marshal(got)
			if len(b) > 4<<10 {
				t.Errorf("the cached copy is %d bytes", len(b))
			}
			// The transform may see its own output again (client-go: TransformFunc should be idempotent).
			again, err := cacheTransform(t, c.obj)(got.DeepCopyObject())
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(again, got) {
				t.Errorf("a second pass changed the cached copy:\n%+v\n%+v", got, again)
			}
		})
	}
}

// A user cannot make the cache keep a VM's template, or take a hash of theirs, by annotating the VM with the keys
// of the cache's own hashes: those are keys the API server refuses.
func TestTrimVMIgnoresForgedCacheAnnotations(t *testing.T) {
	for _, key := range []string{vm.AnnotationCachedSpecHash, vm.AnnotationCachedTemplateHash} {
		if errs := validation.IsQualifiedName(key); len(errs) == 0 {
			t.Errorf("the API server accepts the annotation key %s: a user can set it", key)
		}
	}
	v := fixture.VM("ns", "vm", v1alpha1.RunPolicyManual)
	v.Spec.Template.ObjectMeta.Annotations = map[string]string{"user-data": strings.Repeat("x", 1<<20)}
	v.Annotations = map[string]string{"cache.runpolicy.io/spec-hash": "forged", "cache.runpolicy.io/template-hash": "forged"}
	want := vm.SpecHash(&v.Spec)
	out, _ := cacheTransform(t, v)(v.DeepCopy())
	got := out.(*v1alpha1.VirtualMachine)
	if got.Spec.Template != nil && got.Spec.Template.ObjectMeta.Annotations != nil {
		t.Fatal("the template was kept")
	}
	if got.Annotations[vm.AnnotationCachedSpecHash] != want || len(got.Annotations) != 2 {
		t.Fatalf("want the spec hash %s and the template hash, got %v", want, got.Annotations)
	}
}

// A VMI's hook-sidecar annotation comes from the user's template: the cache keeps how many entries it has and the
// last one's image (which container is runpolicy's), not their arguments.
func TestHookSidecarsForCache(t *testing.T) {
	big := strings.Repeat("a", 200<<10)
	many := "[" + strings.Repeat(`{},`, 256) + `{"image":"registry.example/hook:v1"}]`
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{`[{"image":"registry.example/hook:v1"}]`, `[{"image":"registry.example/hook:v1"}]`},
		{`[{"image":"user/sidecar:1","args":["` + big + `"],"configMap":{"name":"cm","key":"k","hookPath":"/p"}},` +
			`{"image":"registry.example/hook:v1","imagePullPolicy":"IfNotPresent"}]`, `[{},{"image":"registry.example/hook:v1"}]`},
		{`[{"image":"registry.example/hook:v1"},{"image":"user/sidecar:1","args":["` + big + `"]}]`, `[{},{"image":"user/sidecar:1"}]`},
		{`[{"image":"` + big + `"}]`, `[{}]`},
		{"not json " + big, "unreadable"},
		{"[]", "unreadable"},
		{many, "unreadable"},
	} {
		if got := vm.HookSidecarsForCache(c.in); got != c.want {
			t.Errorf("HookSidecarsForCache(%.40q…) = %.80q, want %q", c.in, got, c.want)
		}
		if again := vm.HookSidecarsForCache(c.want); again != c.want {
			t.Errorf("a second pass of %q gave %q", c.want, again)
		}
	}
}
