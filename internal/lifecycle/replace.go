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

// requestsPath is the JSON pointer to KubeVirt's state change requests in a VirtualMachine.
const requestsPath = "/status/stateChangeRequests"

// op is one JSON patch operation (RFC 6902); a remove ignores its value.
type op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// ErrRequestPending: KubeVirt's state change requests were not what the write's test expected, so nothing was
// written: Replace found a start or stop request already held, DropStarts found the requests changed since they
// were read. The caller decides again from a fresh read.
var ErrRequestPending = errors.New("KubeVirt holds other state change requests for the VirtualMachine than expected")

// Replace starts a new VMI in place of the ended VMI ended, under runStrategy Manual, in two writes:
//
//  1. KubeVirt's Start request, alone, into the VM's status.stateChangeRequests, only if KubeVirt holds no request
//     at all (a JSON patch whose test fails otherwise: ErrRequestPending). While the ended VMI exists (and is not
//     being deleted) virt-controller neither serves nor drops it.
//  2. The ended VMI deleted, and only that one (UID precondition; already gone is fine). Once it is gone,
//     virt-controller serves the Start in the same pass and creates the new VMI from the VM's current template: the
//     pass in which it would create it under runStrategy Always.
//
// The caller sends it only once virt-controller has seen the VMI end (policy.KubeVirtSawEnd): until then its cache
// may still show the VMI running, and it drops a Start beside a running VMI (RequestStart says more).
//
// A crash in between leaves the Start beside the ended VMI, which KubeVirt never serves while the VMI is there: the
// next pass deletes it (policy.RestartServeStale), and the test of the first write refuses a second request while
// KubeVirt holds this one.
func (c *Client) Replace(ctx context.Context, namespace, name string, ended types.UID) error {
	if err := c.RequestStart(ctx, namespace, name); err != nil {
		return err
	}
	return c.DeleteEnded(ctx, namespace, name, ended)
}

// RequestStart writes [Start] into the VM's status.stateChangeRequests if KubeVirt holds no request (else
// ErrRequestPending): Replace's first step.
//
// virt-controller drops a leading Start as soon as its cache shows a VMI that is neither final nor being deleted
// (pkg/virt-controller/watch/vm/vm.go, isTrimFirstChangeRequestNeeded), and its cache of VMIs can lag behind its
// cache of VMs. Written while that cache may still show the ended VMI running, the Start would be dropped, the
// deletion would follow, and the VM would be left with neither a VMI nor a request (test/kubevirt, "a Start request
// written beside a VMI"). Once virt-controller removed its finalizer from the ended VMI, its cache shows it final
// for good, and the Start is kept until the VMI is gone.
func (c *Client) RequestStart(ctx context.Context, namespace, name string) error {
	return c.patchRequests(ctx, namespace, name, "start request", []op{
		{Op: "test", Path: requestsPath, Value: nil},
		{Op: "add", Path: requestsPath, Value: []kvv1.VirtualMachineStateChangeRequest{{Action: kvv1.StartRequest}}},
	})
}

// patchRequests applies ops, a JSON patch that starts with a test, to the VM's status: a failed test (kube-apiserver
// answers 422) is ErrRequestPending.
func (c *Client) patchRequests(ctx context.Context, namespace, name, what string, ops []op) error {
	patch, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	err = c.core.Patch(types.JSONPatchType).Namespace(namespace).Resource("virtualmachines").Name(name).
		SubResource("status").Body(patch).Do(ctx).Error()
	switch {
	case apierrors.IsInvalid(err):
		return fmt.Errorf("%s for %s/%s: %w (%v)", what, namespace, name, ErrRequestPending, err)
	case err != nil:
		return fmt.Errorf("%s for %s/%s: %w", what, namespace, name, err)
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

// DropStarts removes the Start requests from the VM's status.stateChangeRequests, in one JSON patch whose test lets
// it through only while they still read current (else ErrRequestPending).
//
// A VM that stays stopped needs it when KubeVirt kept a Start beside its ended VMI: virt-controller drops a Start
// only once it sees the VMI it started neither final nor deleted, so a VMI that ended before that leaves the Start
// pending, and once the ended VMI is deleted, KubeVirt would serve it and start the VM against its policy.
func (c *Client) DropStarts(ctx context.Context, namespace, name string, current []kvv1.VirtualMachineStateChangeRequest) error {
	var kept []kvv1.VirtualMachineStateChangeRequest
	for _, r := range current {
		if r.Action != kvv1.StartRequest {
			kept = append(kept, r)
		}
	}
	ops := []op{{Op: "test", Path: requestsPath, Value: current}}
	if len(kept) == 0 {
		ops = append(ops, op{Op: "remove", Path: requestsPath})
	} else {
		ops = append(ops, op{Op: "replace", Path: requestsPath, Value: kept})
	}
	return c.patchRequests(ctx, namespace, name, "dropping the Start request", ops)
}
