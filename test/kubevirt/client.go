package kubevirt

import (
	"context"
	"encoding/json"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// virt-api's aggregated API group (kubevirt.io/api/core/v1 SubresourceGroupName), served through kube-apiserver.
const (
	SubresourceGroup   = "subresources.kubevirt.io"
	SubresourceVersion = "v1"
)

// NewSubresourceClient returns a REST client for /apis/subresources.kubevirt.io/v1, the way
// kubevirt.io/client-go's kubecli builds its subresource client.
func NewSubresourceClient(cfg *rest.Config) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &schema.GroupVersion{Group: SubresourceGroup, Version: SubresourceVersion}
	c.APIPath = "/apis"
	c.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	c.ContentType = "application/json"
	return rest.RESTClientFor(c)
}

// PutVMSubresource does PUT .../namespaces/<ns>/virtualmachines/<name>/<action> with opts as JSON body (nil: no
// body), like virtctl start/stop/restart. A refusal comes back as an *errors.StatusError (409 Conflict etc.).
func PutVMSubresource(ctx context.Context, rc rest.Interface, namespace, name, action string, opts any) error {
	req := rc.Put().Namespace(namespace).Resource("virtualmachines").Name(name).SubResource(action)
	if opts != nil {
		body, err := json.Marshal(opts)
		if err != nil {
			return err
		}
		req = req.SetHeader("Content-Type", "application/json").Body(body)
	}
	return req.Do(ctx).Error()
}
