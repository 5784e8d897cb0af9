package refusal

import (
	"errors"
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestPermanent(t *testing.T) {
	gr := schema.GroupResource{Group: "kubevirt.io", Resource: "virtualmachines"}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"bad request", apierrors.NewBadRequest("no"), true},
		{"invalid (a webhook's denial)", apierrors.NewInvalid(schema.GroupKind{Kind: "VirtualMachine"}, "vm", nil), true},
		{"forbidden", apierrors.NewForbidden(gr, "vm", errors.New("no")), true},
		{"method not supported", apierrors.NewMethodNotSupported(gr, "put"), true},
		{"413", apierrors.NewRequestEntityTooLargeError("limit is 3145728"), true},
		{"etcd's limit, wrapped", fmt.Errorf("apply: %w", errors.New("etcdserver: request is too large")), true},
		{"conflict", apierrors.NewConflict(gr, "vm", errors.New("changed")), false},
		{"virt-api's already underway (500)", apierrors.NewInternalError(errors.New("stop/start already underway")), false},
		{"unavailable", apierrors.NewServiceUnavailable("later"), false},
		{"expired token", apierrors.NewUnauthorized("expired"), false},
		{"timeout", apierrors.NewTimeoutError("slow", 1), false},
		{"nil", nil, false},
	} {
		if got := Permanent(c.err); got != c.want {
			t.Errorf("%s: Permanent = %v, want %v", c.name, got, c.want)
		}
	}
}
