// Package refusal classifies the API server's refusals for both reconcilers: those a retry cannot fix (Permanent),
// which end in a condition or a Failed operation with the server's message, and the rest, retried with backoff.
package refusal

import (
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Permanent tells the refusals a retry cannot fix, only a change of the request: a bad request, an invalid body
// (a webhook's or the schema's), no permission, a method the endpoint does not serve, or an object too large to
// store. Everything else — conflicts, KubeVirt's "stop/start already underway" (HTTP 500 from virt-api), timeouts,
// unavailability, an expired token (401) — is worth retrying.
func Permanent(err error) bool {
	return apierrors.IsBadRequest(err) || apierrors.IsInvalid(err) || apierrors.IsForbidden(err) ||
		apierrors.IsMethodNotSupported(err) || TooLarge(err)
}

// TooLarge tells the refusals of an object too large to store: kube-apiserver's 413 and etcd's own limit
// ("etcdserver: request is too large"), which only a smaller spec can fix.
func TooLarge(err error) bool {
	return err != nil && (apierrors.IsRequestEntityTooLargeError(err) || strings.Contains(err.Error(), "request is too large"))
}
