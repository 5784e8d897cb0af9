package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
)

// ErrRequestPending: KubeVirt already holds a start or stop request for the VM, so Replace wrote none.
var ErrRequestPending = errors.New("KubeVirt already holds a state change request for the VirtualMachine")

// Replace starts a new VMI in place of the ended VMI ended, under runStrategy Manual, in two writes:
//
//  1. KubeVirt's Start request into the VM's status.stateChangeRequests, only if KubeVirt holds no request at all
//     (a JSON patch whose test fails otherwise: ErrRequestPending). This is the request virt-api's start writes,
//     minus the Stop{ended} in front of it that virt-controller would first have to act on and trim.
//  2. The ended VMI deleted, and only that one (UID precondition; already gone is fine). Under Manual,
//     virt-controller leaves a Start request beside an existing VMI alone; once the VMI is gone it creates the
//     new one from the VM's current template, as under runStrategy Always it replaces an ended VMI.
//
// The order keeps a crash in between harmless: a Start request beside the ended VMI is found and served by deleting
// that VMI (the caller's restart protocol, docs/restart-protocol.md); the reverse order could leave the VM with
// neither VMI nor request.
func (c *Client) Replace(ctx context.Context, namespace, name string, ended types.UID) error {
	if err := c.RequestStart(ctx, namespace, name); err != nil {
		return err
	}
	return c.DeleteEnded(ctx, namespace, name, ended)
}

// RequestStart writes KubeVirt's Start request into the VM's status.stateChangeRequests if KubeVirt holds no request
// (else ErrRequestPending): Replace's first step.
func (c *Client) RequestStart(ctx context.Context, namespace, name string) error {
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/status/stateChangeRequests", "value": nil},
		{"op": "add", "path": "/status/stateChangeRequests", "value": []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}}},
	})
	if err != nil {
		return err
	}
	err = c.core.Patch(types.JSONPatchType).Namespace(namespace).Resource("virtualmachines").Name(name).
		SubResource("status").Body(patch).Do(ctx).Error()
	switch {
	case apierrors.IsInvalid(err):
		// kube-apiserver answers a failed JSON patch test with 422.
		return fmt.Errorf("start request for %s/%s: %w (%v)", namespace, name, ErrRequestPending, err)
	case err != nil:
		return fmt.Errorf("start request for %s/%s: %w", namespace, name, err)
	}
	return nil
}

// DeleteEnded deletes the VMI of the VM, only if it is the VMI ended (UID precondition); already gone is no error:
// Replace's second step.
func (c *Client) DeleteEnded(ctx context.Context, namespace, name string, ended types.UID) error {
	opts, err := json.Marshal(&metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &ended}})
	if err != nil {
		return err
	}
	err = c.core.Delete().Namespace(namespace).Resource("virtualmachineinstances").Name(name).Body(opts).Do(ctx).Error()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting the ended VMI %s/%s (%s): %w", namespace, name, ended, err)
	}
	return nil
}
