// Package lifecycle asks KubeVirt to start, stop and restart VirtualMachines: through the start, stop and restart
// subresources of subresources.kubevirt.io/v1 virtualmachines (the endpoints virtctl uses), and, for the restart of
// an ended VMI, by writing KubeVirt's Start request into the VM's status directly (Replace).
package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	kvv1 "kubevirt.io/api/core/v1"
)

// SubresourceGroupVersion is KubeVirt's subresource API group.
var SubresourceGroupVersion = schema.GroupVersion{Group: "subresources.kubevirt.io", Version: "v1"}

// Interface performs start, stop and restart on KubeVirt VirtualMachines.
type Interface interface {
	Start(ctx context.Context, namespace, name string) error
	Stop(ctx context.Context, namespace, name string, force bool) error
	Restart(ctx context.Context, namespace, name string, force bool) error
	// Replace starts a new VMI in place of the ended VMI ended, under runStrategy Manual (see replace.go).
	Replace(ctx context.Context, namespace, name string, ended types.UID) error
	// DropStarts removes the Start requests from the VM's stateChangeRequests, only if they still read current
	// (see replace.go).
	DropStarts(ctx context.Context, namespace, name string, current []kvv1.VirtualMachineStateChangeRequest) error
}

// Client is an Interface over REST clients: one for KubeVirt's subresource API, one for kubevirt.io/v1.
type Client struct {
	rest rest.Interface
	core rest.Interface
}

// NewClient returns a client for cfg.
func NewClient(cfg *rest.Config) (*Client, error) {
	sub, err := restClient(cfg, SubresourceGroupVersion)
	if err != nil {
		return nil, err
	}
	core, err := restClient(cfg, kvv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{rest: sub, core: core}, nil
}

func restClient(cfg *rest.Config, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.WithoutConversionCodecFactory{CodecFactory: scheme.Codecs}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}

func (c *Client) put(ctx context.Context, namespace, name, verb string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	res := c.rest.Put().Namespace(namespace).Resource("virtualmachines").Name(name).SubResource(verb).
		SetHeader("Content-Type", "application/json").Body(b).Do(ctx)
	if err := res.Error(); err != nil {
		return fmt.Errorf("KubeVirt %s of %s/%s: %w", verb, namespace, name, err)
	}
	return nil
}

// Start asks KubeVirt to start the VM.
func (c *Client) Start(ctx context.Context, namespace, name string) error {
	return c.put(ctx, namespace, name, "start", &kvv1.StartOptions{})
}

// Stop asks KubeVirt to stop the VM; force stops it with grace period 0.
func (c *Client) Stop(ctx context.Context, namespace, name string, force bool) error {
	opts := &kvv1.StopOptions{}
	if force {
		zero := int64(0)
		opts.GracePeriod = &zero
	}
	return c.put(ctx, namespace, name, "stop", opts)
}

// Restart asks KubeVirt to restart the VM; force deletes the old VMI with grace period 0.
func (c *Client) Restart(ctx context.Context, namespace, name string, force bool) error {
	opts := &kvv1.RestartOptions{}
	if force {
		zero := int64(0)
		opts.GracePeriodSeconds = &zero
	}
	return c.put(ctx, namespace, name, "restart", opts)
}
