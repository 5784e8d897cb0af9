// Package controllers wires runpolicy's reconcilers into a controller-runtime manager.
package controllers

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers/powerschedule"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/startgate"
)

// Options configures the reconcilers.
type Options struct {
	// HookSidecarImage is runpolicy's hook sidecar image; empty adds none.
	HookSidecarImage string
	// HookSidecarMode says when the sidecar is added to VMI templates: auto (while KubeVirt's Sidecar feature
	// gate is on; also when empty), true (always), false (never).
	HookSidecarMode policy.SidecarMode
	// Backoff spaces out restarts after consecutive failures; a zero Base means policy.DefaultBackoff.
	Backoff policy.Backoff
	// OperationTTL removes finished VirtualMachineOperations that long after they finished; zero means
	// vmop.DefaultTTL, negative keeps them.
	OperationTTL time.Duration
	// OperationsPerVM keeps at most that many finished VirtualMachineOperations per VM; zero means
	// vmop.DefaultMaxPerVM, negative means no limit.
	OperationsPerVM int
	// OperationTimeout fails an operation whose target state KubeVirt has not reached that long after accepting
	// its signal; zero means vmop.DefaultTimeout, negative waits for ever.
	OperationTimeout time.Duration
	// RestartRequest is how a restart asks KubeVirt for the new VMI; empty means vm.RestartViaStateChangeRequest.
	RestartRequest vm.RestartRequest
	// Workers is how many VMs are reconciled at once; 0 means DefaultWorkers.
	Workers int
	// MaxConcurrentStarts caps how many VMs start at once (internal/startgate); 0 means no cap.
	MaxConcurrentStarts int
	// PodGuardInterval is how often the operator looks whether the launcher-pod admission policy is installed
	// (podguard.go); zero means once a minute.
	PodGuardInterval time.Duration
	// Lifecycle overrides the client of KubeVirt's start/stop/restart subresources (tests inject faults with it);
	// nil means a client built from the manager's config.
	Lifecycle lifecycle.Interface
}

// DefaultWorkers is the default number of VMs reconciled at once.
const DefaultWorkers = vm.DefaultWorkers

// NewScheme returns a scheme with the Kubernetes, KubeVirt and runpolicy types.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(kvv1.AddToScheme(s))
	utilruntime.Must(v1alpha1.AddToScheme(s))
	return s
}

// CacheOptions limits the manager's caches to what runpolicy reads: of all pods, only KubeVirt's launcher pods, and
// of those, of KubeVirt's VMs and VMIs, of runpolicy's own VMs and of VirtualMachineOperations only the fields the
// reconcilers use (cachetrim.go): no annotation or label they do not read, whatever users store there. managedFields
// of every object are dropped.
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {
				Label:     labels.SelectorFromSet(labels.Set{vm.LabelLauncher: vm.LauncherValue}),
				Transform: trimLauncherPod,
			},
			&v1alpha1.VirtualMachine{}:          {Transform: trimVM},
			&v1alpha1.VirtualMachineOperation{}: {Transform: trimOperation},
			&kvv1.VirtualMachine{}:              {Transform: trimKubeVirtVM},
			&kvv1.VirtualMachineInstance{}:      {Transform: trimVMI},
		},
	}
}

// The metrics endpoint asks kube-apiserver who its client is and whether it may GET /metrics.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Setup registers every runpolicy reconciler with mgr.
func Setup(mgr ctrl.Manager, opts Options) error {
	lc := opts.Lifecycle
	if lc == nil {
		c, err := lifecycle.NewClient(mgr.GetConfig())
		if err != nil {
			return err
		}
		lc = c
	}
	if err := SetupMetrics(mgr); err != nil {
		return err
	}
	if err := mgr.Add(&podGuardCheck{reader: mgr.GetAPIReader(), interval: opts.PodGuardInterval}); err != nil {
		return err
	}
	starts := startGate(opts.MaxConcurrentStarts)
	if err := (&vm.Reconciler{
		Client:           mgr.GetClient(),
		APIReader:        mgr.GetAPIReader(),
		Recorder:         mgr.GetEventRecorder("runpolicy-controller"),
		HookSidecarImage: opts.HookSidecarImage,
		SidecarMode:      opts.HookSidecarMode,
		Lifecycle:        lc,
		RestartRequest:   opts.RestartRequest,
		Backoff:          opts.Backoff,
		Workers:          opts.Workers,
		Starts:           starts,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&powerschedule.Reconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("runpolicy-controller"),
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&vmop.Reconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("runpolicy-controller"),
		Lifecycle: lc,
		TTL:       opts.OperationTTL,
		MaxPerVM:  opts.OperationsPerVM,
		Timeout:   opts.OperationTimeout,
		Starts:    starts,
	}).SetupWithManager(mgr)
}

// startGate is the start gate the VM and operation controllers share for a cap of max VMs starting at once; nil without a cap.
func startGate(max int) *startgate.Gate {
	if max <= 0 {
		return nil
	}
	return &startgate.Gate{Max: max}
}
