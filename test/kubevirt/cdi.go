package kubevirt

import (
	"context"
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DataVolumeGVK is CDI's DataVolume (test/crds/cdi holds its CRD, reduced to its names).
var DataVolumeGVK = schema.GroupVersionKind{Group: "cdi.kubevirt.io", Version: "v1beta1", Kind: "DataVolume"}

func newDataVolume() *unstructured.Unstructured {
	dv := &unstructured.Unstructured{}
	dv.SetGroupVersionKind(DataVolumeGVK)
	return dv
}

// cdi plays CDI's part for the DataVolumes real virt-controller creates from a VM's dataVolumeTemplates (CDI does
// not run here): the DataVolume's PVC is created, owned by it and Bound, and the DataVolume reports Succeeded,
// which is what virt-controller waits for before it creates the launcher pod. No data is imported.
type cdi struct {
	n *Node
}

func (r *cdi) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	c := r.n.client
	dv := newDataVolume()
	if err := c.Get(ctx, req.NamespacedName, dv); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if phase, _, _ := unstructured.NestedString(dv.Object, "status", "phase"); phase == "Succeeded" || dv.GetDeletionTimestamp() != nil {
		return ctrl.Result{}, nil
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: dv.GetNamespace(), Name: dv.GetName(),
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dv, DataVolumeGVK)}}}
	size := resource.MustParse("1Gi")
	for _, path := range [][]string{{"spec", "storage", "resources", "requests", "storage"}, {"spec", "pvc", "resources", "requests", "storage"}} {
		if s, ok, _ := unstructured.NestedString(dv.Object, path...); ok {
			if q, err := resource.ParseQuantity(s); err == nil {
				size = q
			}
		}
	}
	pvc.Spec = corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
	}
	if err := c.Create(ctx, pvc); err != nil && !apierrors.IsAlreadyExists(err) {
		return ctrl.Result{}, err
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(pvc), pvc); err != nil {
		return ctrl.Result{}, err
	}
	if pvc.Status.Phase != corev1.ClaimBound {
		pvc.Status.Phase = corev1.ClaimBound
		pvc.Status.AccessModes = pvc.Spec.AccessModes
		pvc.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: size}
		if err := c.Status().Update(ctx, pvc); err != nil {
			return ctrl.Result{}, err
		}
	}
	// The reduced CRD has no status subresource: the status is part of the object.
	now := metav1.Now().UTC().Format("2006-01-02T15:04:05Z")
	status := map[string]any{
		"phase": "Succeeded", "progress": "100.0%", "claimName": pvc.Name,
		"conditions": []any{
			map[string]any{"type": "Bound", "status": "True", "reason": "Bound", "lastTransitionTime": now, "lastHeartbeatTime": now},
			map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": now, "lastHeartbeatTime": now},
			map[string]any{"type": "Running", "status": "False", "reason": "Completed", "lastTransitionTime": now, "lastHeartbeatTime": now},
		},
	}
	b, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, client.IgnoreNotFound(c.Patch(ctx, dv, client.RawPatch("application/merge-patch+json", b)))
}
