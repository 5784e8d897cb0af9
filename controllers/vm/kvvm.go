package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

const (
	// FieldOwner is the server-side apply field manager runpolicy writes KubeVirt VMs with.
	FieldOwner = "runpolicy-controller"

	// AnnotationRunPolicy on the KubeVirt VM records the runPolicy it was last applied for; a change of policy
	// is detected against it.
	AnnotationRunPolicy = "runpolicy.io/run-policy"
	// AnnotationTemplateHash in the VMI template (and so on every VMI KubeVirt creates from it) identifies the
	// template a VMI was built from.
	AnnotationTemplateHash = "runpolicy.io/template-hash"
	// AnnotationAppliedHash on the KubeVirt VM is the hash of the object runpolicy last applied; with the recorded
	// generation it tells that nothing needs applying.
	AnnotationAppliedHash = "runpolicy.io/applied-hash"
	// AnnotationAdopt on an existing KubeVirt VM that runpolicy did not create lets runpolicy take it over.
	AnnotationAdopt = "runpolicy.io/adopt"
	// LabelManagedBy marks the KubeVirt VMs runpolicy manages.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "runpolicy"

	// AnnotationHookSidecars is KubeVirt's hook sidecar annotation (Sidecar feature gate).
	AnnotationHookSidecars = "hooks.kubevirt.io/hookSidecars"
)

// hookSidecar is one entry of KubeVirt's hooks.kubevirt.io/hookSidecars annotation.
type hookSidecar struct {
	Image           string   `json:"image,omitempty"`
	ImagePullPolicy string   `json:"imagePullPolicy,omitempty"`
	Args            []string `json:"args,omitempty"`
}

// TemplateHash hashes the user's VMI template; it is stored in the template so each VMI carries the hash of the
// template it was built from.
func TemplateHash(t *kvv1.VirtualMachineInstanceTemplateSpec) string { return hashJSON(t) }

// hashJSON is the short hash runpolicy records of an object: its JSON encoding (map keys sorted), SHA-256, first 8
// bytes in hex. Only API types and plain structs are passed, which always encode.
func hashJSON(v any) string {
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// userHookSidecar is what KubeVirt reads of an entry of the hook-sidecar annotation (hooksv1alpha1.HookSidecar):
// a value of another JSON type in a known field is an error there, at the VMI's launcher pod, and the VMI stays
// Pending.
type userHookSidecar struct {
	Image           string          `json:"image"`
	ImagePullPolicy string          `json:"imagePullPolicy"`
	Command         []string        `json:"command"`
	Args            []string        `json:"args"`
	ConfigMap       *map[string]any `json:"configMap"`
	PVC             *map[string]any `json:"pvc"`
	DownwardAPI     string          `json:"downwardAPI"`
}

// checkHookSidecars refuses a hook-sidecar annotation in the user's template that KubeVirt could not turn into
// containers: not a JSON list of objects, a field of the wrong type, or an entry that names neither an image nor a
// ConfigMap or PVC hook script (KubeVirt's sidecar-shim). Such a VM would be accepted, then never start.
func checkHookSidecars(value string) error {
	var list []json.RawMessage
	if err := json.Unmarshal([]byte(value), &list); err != nil {
		return fmt.Errorf("template annotation %s is not a JSON list: %w", AnnotationHookSidecars, err)
	}
	for i, raw := range list {
		var e userHookSidecar
		if t := strings.TrimSpace(string(raw)); !strings.HasPrefix(t, "{") {
			return fmt.Errorf("template annotation %s: entry %d is %s, not an object", AnnotationHookSidecars, i, t)
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return fmt.Errorf("template annotation %s: entry %d: %w", AnnotationHookSidecars, i, err)
		}
		if e.Image == "" && e.ConfigMap == nil && e.PVC == nil {
			return fmt.Errorf("template annotation %s: entry %d names no image (nor a configMap or pvc hook script)",
				AnnotationHookSidecars, i)
		}
	}
	return nil
}

// withHookSidecar returns the hook-sidecar annotation value with runpolicy's sidecar appended after the user's own
// sidecars. runpolicy's entry is always the last one: an entry of the user's that merely names the same image is
// the user's, and its container's termination message is never read (ourSidecarContainer).
func withHookSidecar(current, image string) (string, error) {
	list := make([]json.RawMessage, 0, 1)
	if current != "" {
		if err := json.Unmarshal([]byte(current), &list); err != nil {
			return "", fmt.Errorf("template annotation %s is not a JSON list: %w", AnnotationHookSidecars, err)
		}
	}
	ours, _ := json.Marshal(hookSidecar{Image: image, ImagePullPolicy: "IfNotPresent"})
	list = append(list, ours)
	out, _ := json.Marshal(list)
	return string(out), nil
}

// ourSidecarContainer is the name of the container KubeVirt runs for runpolicy's entry of a VMI's hook-sidecar
// annotation (hook-sidecar-N for the N-th entry, pkg/virt-controller/services/template.go), or "" when the last
// entry is not runpolicy's.
func ourSidecarContainer(annotation, image string) string {
	var list []hookSidecar
	if annotation == "" || image == "" || json.Unmarshal([]byte(annotation), &list) != nil || len(list) == 0 ||
		imageRepository(list[len(list)-1].Image) != imageRepository(image) {
		return ""
	}
	return fmt.Sprintf("hook-sidecar-%d", len(list)-1)
}

// imageRepository strips an image reference's tag and digest, so that VMIs started before an upgrade of the
// operator (an older sidecar tag) are still recognised.
func imageRepository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// hasHookSidecar tells whether a hook-sidecar annotation value carries runpolicy's sidecar (image).
func hasHookSidecar(annotation, image string) bool {
	return ourSidecarContainer(annotation, image) != ""
}

// desiredKubeVirtVM builds the KubeVirt VirtualMachine runpolicy applies for vm: hookImage, when set, is added as
// a hook sidecar; rebootTerminate sets spec.domain.rebootPolicy: Terminate (policy.SetRebootPolicy).
func desiredKubeVirtVM(vm *v1alpha1.VirtualMachine, strategy kvv1.VirtualMachineRunStrategy, hookImage string,
	rebootTerminate bool) (*kvv1.VirtualMachine, error) {
	spec := *vm.Spec.VirtualMachineSpec.DeepCopy()
	spec.Running = nil
	spec.RunStrategy = ptr.To(strategy)
	if spec.Template == nil {
		spec.Template = &kvv1.VirtualMachineInstanceTemplateSpec{}
	}
	hash := TemplateHash(spec.Template)
	ann := map[string]string{}
	for k, v := range spec.Template.ObjectMeta.Annotations {
		ann[k] = v
	}
	ann[AnnotationTemplateHash] = hash
	if v, ok := ann[AnnotationHookSidecars]; ok {
		if err := checkHookSidecars(v); err != nil {
			return nil, err
		}
	}
	if hookImage != "" {
		v, err := withHookSidecar(ann[AnnotationHookSidecars], hookImage)
		if err != nil {
			return nil, err
		}
		ann[AnnotationHookSidecars] = v
	}
	spec.Template.ObjectMeta.Annotations = ann
	if rebootTerminate && spec.Template.Spec.Domain.RebootPolicy == nil {
		spec.Template.Spec.Domain.RebootPolicy = ptr.To(kvv1.RebootPolicyTerminate)
	}

	kv := &kvv1.VirtualMachine{
		TypeMeta: metav1.TypeMeta{APIVersion: kvv1.SchemeGroupVersion.String(), Kind: "VirtualMachine"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        vm.Name,
			Namespace:   vm.Namespace,
			Labels:      map[string]string{LabelManagedBy: ManagedByValue},
			Annotations: map[string]string{AnnotationRunPolicy: string(vm.Spec.RunPolicy)},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         v1alpha1.GroupVersion.String(),
				Kind:               "VirtualMachine",
				Name:               vm.Name,
				UID:                vm.UID,
				Controller:         ptr.To(true),
				BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: spec,
	}
	return kv, nil
}

// ownMetadataIntact tells whether the KubeVirt VM still carries the label and annotation runpolicy applies. An
// edit user may remove them (metadata changes bump no generation); runpolicy puts them back at once, since tools
// and the chart's admission policies select on them.
func ownMetadataIntact(kv *kvv1.VirtualMachine, vm *v1alpha1.VirtualMachine) bool {
	return kv.Labels[LabelManagedBy] == ManagedByValue && kv.Annotations[AnnotationRunPolicy] == string(vm.Spec.RunPolicy)
}

// applyObject turns a typed object into the unstructured apply configuration server-side apply expects:
// no status, and no null values (a typed struct encodes unset non-omitempty fields as null, which apply
// would read as "owned and empty").
func applyObject(obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	delete(m, "status")
	pruneNulls(m)
	return &unstructured.Unstructured{Object: m}, nil
}

func mergeMaps(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func pruneNulls(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if e == nil {
				delete(t, k)
				continue
			}
			pruneNulls(e)
		}
	case []any:
		for _, e := range t {
			pruneNulls(e)
		}
	}
}

// Rendered is the KubeVirt VirtualMachine runpolicy applies for vm under runStrategy strategy, with runpolicy's
// hook sidecar hookImage (none when empty): what a user would have to write to get the same VM from KubeVirt alone
// (make bench compares creating those with creating runpolicy VMs).
func Rendered(vm *v1alpha1.VirtualMachine, strategy kvv1.VirtualMachineRunStrategy, hookImage string) (*kvv1.VirtualMachine, error) {
	return desiredKubeVirtVM(vm, strategy, hookImage, false)
}
