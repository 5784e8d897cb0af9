package kubevirt

import (
	"context"
	"encoding/json"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
)

// DataVolumeGVK is CDI's DataVolume (test/crds/cdi holds its CRD, reduced to its names).
var DataVolumeGVK = schema.GroupVersionKind{Group: "cdi.kubevirt.io", Version: "v1beta1", Kind: "DataVolume"}

// ensureDataVolumes creates the VM's DataVolumes that do not exist yet, one per spec.dataVolumeTemplates entry, as
// virt-controller does (vm.go handleDataVolumes / CreateDataVolumeManifest): named after the template, its labels
// plus kubevirt.io/created-by=<VM UID>, its spec, and the VM as controller owner, so that deleting the VM lets the
// garbage collector delete them. CDI's import is not modelled: a DataVolume is created with phase Succeeded, and
// the VMI does not wait for it. An existing DataVolume of that name is left as it is.
func (s *StandIn) ensureDataVolumes(ctx context.Context, vm *virtv1.VirtualMachine) error {
	for _, tmpl := range vm.Spec.DataVolumeTemplates {
		existing := &unstructured.Unstructured{}
		existing.SetGroupVersionKind(DataVolumeGVK)
		err := s.client.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: tmpl.Name}, existing)
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		spec, err := toMap(tmpl.Spec)
		if err != nil {
			return err
		}
		dv := &unstructured.Unstructured{Object: map[string]any{
			"spec":   spec,
			"status": map[string]any{"phase": "Succeeded", "progress": "100.0%"},
		}}
		dv.SetGroupVersionKind(DataVolumeGVK)
		dv.SetNamespace(vm.Namespace)
		dv.SetName(tmpl.Name)
		labels := map[string]string{}
		for k, v := range tmpl.Labels {
			labels[k] = v
		}
		labels[virtv1.CreatedByLabel] = string(vm.UID)
		dv.SetLabels(labels)
		dv.SetAnnotations(tmpl.Annotations)
		dv.SetOwnerReferences([]metav1.OwnerReference{*metav1.NewControllerRef(vm, virtv1.VirtualMachineGroupVersionKind)})
		if err := s.client.Create(ctx, dv); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	return m, json.Unmarshal(b, &m)
}
