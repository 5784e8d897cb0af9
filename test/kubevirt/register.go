package kubevirt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// APIServiceName is the APIService virt-api registers.
const APIServiceName = SubresourceVersion + "." + SubresourceGroup

var apiServiceGVK = schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"}

// register creates the ExternalName Service virt-api.<ns> → localhost and the APIService
// v1.subresources.kubevirt.io pointing at it (port = the server's port, caBundle = its CA), then waits until
// kube-aggregator's availability check (a discovery GET through the same route) reports Available.
func (s *StandIn) register(ctx context.Context, port int32, caBundle []byte) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.opts.Namespace}}
	if err := s.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: serviceName, Namespace: s.opts.Namespace}}
	if err := s.client.Get(ctx, client.ObjectKeyFromObject(svc), svc); apierrors.IsNotFound(err) {
		svc.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"}
		if err := s.client.Create(ctx, svc); err != nil {
			return fmt.Errorf("creating the virt-api ExternalName Service: %w", err)
		}
	} else if err != nil {
		return err
	}

	desired := map[string]any{
		"group":                SubresourceGroup,
		"version":              SubresourceVersion,
		"groupPriorityMinimum": int64(1000),
		"versionPriority":      int64(15),
		"caBundle":             caBundle, // []byte → base64, as the API expects
		"service":              map[string]any{"namespace": s.opts.Namespace, "name": serviceName, "port": int64(port)},
	}
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(apiServiceGVK)
	err := s.client.Get(ctx, types.NamespacedName{Name: APIServiceName}, obj)
	switch {
	case apierrors.IsNotFound(err):
		obj.SetName(APIServiceName)
		if err := unstructured.SetNestedField(obj.Object, toJSONMap(desired), "spec"); err != nil {
			return err
		}
		if err := s.client.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating APIService %s: %w", APIServiceName, err)
		}
	case err != nil:
		return err
	default:
		if err := unstructured.SetNestedField(obj.Object, toJSONMap(desired), "spec"); err != nil {
			return err
		}
		if err := s.client.Update(ctx, obj); err != nil {
			return fmt.Errorf("updating APIService %s: %w", APIServiceName, err)
		}
	}

	var last string
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		cur := &unstructured.Unstructured{}
		cur.SetGroupVersionKind(apiServiceGVK)
		if err := s.client.Get(ctx, types.NamespacedName{Name: APIServiceName}, cur); err != nil {
			return false, nil
		}
		if p, _, _ := unstructured.NestedInt64(cur.Object, "spec", "service", "port"); p != int64(port) {
			return false, nil // still the previous registration
		}
		conds, _, _ := unstructured.NestedSlice(cur.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Available" {
				last = fmt.Sprintf("%v: %v", m["reason"], m["message"])
				return m["status"] == "True", nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("APIService %s did not become Available (%s): %w", APIServiceName, last, err)
	}
	return nil
}

func (s *StandIn) unregister(ctx context.Context) error {
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(apiServiceGVK)
	obj.SetName(APIServiceName)
	return client.IgnoreNotFound(s.client.Delete(ctx, obj))
}

// toJSONMap converts to the plain JSON types unstructured accepts.
func toJSONMap(m map[string]any) map[string]any {
	out, err := runtimeToUnstructured(m)
	if err != nil {
		panic(err)
	}
	return out
}

func runtimeToUnstructured(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	return out, json.Unmarshal(b, &out)
}
