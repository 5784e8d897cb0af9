// Package controllers wires runpolicy's reconcilers into a controller-runtime manager.
package controllers

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/vm"
)

// Options configures the reconcilers.
type Options struct {
	// HookSidecarImage is the hook sidecar image added to every VMI template; empty adds none.
	HookSidecarImage string
}

// NewScheme returns a scheme with the Kubernetes, KubeVirt and runpolicy types.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(kvv1.AddToScheme(s))
	utilruntime.Must(v1alpha1.AddToScheme(s))
	return s
}

// Setup registers every runpolicy reconciler with mgr.
func Setup(mgr ctrl.Manager, opts Options) error {
	return (&vm.Reconciler{
		Client:           mgr.GetClient(),
		Recorder:         mgr.GetEventRecorder("runpolicy-controller"),
		HookSidecarImage: opts.HookSidecarImage,
	}).SetupWithManager(mgr)
}
