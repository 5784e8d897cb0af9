package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kubeVirtDefaults are the spec fields KubeVirt itself adds to a VirtualMachine: its VM mutator (machine type,
// architecture, kubevirt.io/ template annotations: isDefault) and, from v1.9, virt-controller's firmware
// synchronizer (pkg/virt-controller/watch/vm/firmware.go). They are kept when runpolicy reverts foreign changes;
// anything else in the spec that runpolicy did not apply is foreign.
//
//nolint:goconst // field paths read best spelled out, element by element.
var kubeVirtDefaults = [][]string{
	{"template", "spec", "domain", "firmware", "uuid"},
	{"template", "spec", "domain", "firmware", "serial"},
	{"template", "spec", "domain", "machine", "type"},
	{"template", "spec", "architecture"},
}

// foreignFields lists the paths under spec that the live KubeVirt VM has and runpolicy's apply did not set,
// KubeVirt's own defaults excepted. Server-side apply keeps such fields (another field manager owns them), so a
// direct patch of the KubeVirt VM (a nodeSelector, a disk) or a previous owner's template would survive every apply.
func foreignFields(want, live map[string]any) []string {
	var out []string
	report := func(path []string) {
		if !isDefault(path) {
			out = append(out, "spec."+strings.Join(path, "."))
		}
	}
	// wanted tells whether runpolicy's apply has the path at all.
	var walk func(path []string, w any, wanted bool, l any)
	walk = func(path []string, w any, wanted bool, l any) {
		if isEmpty(l) {
			return
		}
		switch lv := l.(type) {
		case map[string]any:
			wm, _ := w.(map[string]any)
			for k, v := range lv {
				wv, ok := wm[k]
				walk(append(slices.Clone(path), k), wv, ok, v)
			}
		case []any:
			wl, _ := w.([]any)
			if !wanted || len(wl) != len(lv) {
				report(path)
				return
			}
			for i := range lv {
				walk(append(slices.Clone(path), strconv.Itoa(i)), wl[i], true, lv[i])
			}
		default:
			if !wanted {
				report(path)
			}
		}
	}
	walk(nil, want, true, live)
	slices.Sort(out)
	return out
}

func isDefault(path []string) bool {
	for _, d := range kubeVirtDefaults {
		if slices.Equal(d, path) {
			return true
		}
	}
	// KubeVirt's own annotations and labels on the template (e.g. kubevirt.io/pci-topology-version, added by
	// KubeVirt v1.8's VM mutator); KubeVirt refuses kubevirt.io/ labels from anyone else.
	return len(path) == 4 && path[0] == "template" && path[1] == "metadata" &&
		(path[2] == "annotations" || path[2] == "labels") && strings.HasPrefix(path[3], "kubevirt.io/")
}

func isEmpty(v any) bool {
	switch t := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(t) == 0
	case []any:
		return len(t) == 0
	}
	return false
}

// revertedSpec is want with KubeVirt's own defaults carried over from live: the spec runpolicy writes back when
// foreignFields found something.
func revertedSpec(want, live map[string]any) map[string]any {
	spec := runtime.DeepCopyJSON(want)
	defaults := slices.Clone(kubeVirtDefaults)
	for _, kind := range []string{"annotations", "labels"} {
		m, _, _ := unstructured.NestedMap(live, "template", "metadata", kind)
		for k := range m {
			if p := []string{"template", "metadata", kind, k}; isDefault(p) {
				defaults = append(defaults, p)
			}
		}
	}
	for _, d := range defaults {
		if v, ok, _ := unstructured.NestedFieldNoCopy(live, d...); ok {
			_ = unstructured.SetNestedField(spec, v, d...) // copies v; want's maps are maps all the way down
		}
	}
	return spec
}

// summarize names at most n paths.
func summarize(paths []string, n int) string {
	if len(paths) <= n {
		return strings.Join(paths, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(paths[:n], ", "), len(paths)-n)
}

// revertSpec writes spec as the KubeVirt VM's whole spec with a JSON patch: the chart's ClusterRole grants patch,
// not update, on KubeVirt VMs. The patch tests the resourceVersion obj was read at, so a change made since is never
// overwritten unseen (a conflict; the next pass looks again). obj is updated to the server's answer.
func (r *Reconciler) revertSpec(ctx context.Context, obj *unstructured.Unstructured, spec map[string]any) error {
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/resourceVersion", "value": obj.GetResourceVersion()},
		{"op": "replace", "path": "/spec", "value": spec},
	})
	if err != nil {
		return err
	}
	err = r.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, patch), client.FieldOwner(FieldOwner))
	if apierrors.IsInvalid(err) && strings.Contains(err.Error(), "test failed") {
		// kube-apiserver answers a failed test operation with 422: the object changed since it was read.
		return apierrors.NewConflict(schema.GroupResource{Group: kvv1.SchemeGroupVersion.Group, Resource: "virtualmachines"}, obj.GetName(), err)
	}
	return err
}
