// Package operatorflags holds the operator's command-line flags and turns them into the reconcilers' options and the
// manager's settings. cmd/controller parses its command line with it, and the tests parse the Helm chart's rendered
// Deployment args with it (test/chartrbac), so that what a test runs is what the chart runs: one parser, not two.
package operatorflags

import (
	"flag"
	"fmt"
	"io"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/metricsauth"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// LeaderElectionID names the operator's leader election Lease.
const LeaderElectionID = "runpolicy-controller.runpolicy.io"

// Flags are the operator's flags (but --kubeconfig, which controller-runtime registers on flag.CommandLine).
type Flags struct {
	MetricsAddr    string
	MetricsSecure  bool
	MetricsCertDir string
	ProbeAddr      string
	PprofAddr      string
	LeaderElect    bool
	LeaderNS       string
	LeaseDuration  time.Duration
	// Controllers holds what the flags set of the reconcilers' options; Options completes and checks it.
	Controllers    controllers.Options
	SidecarMode    string
	RestartRequest string
	// Zap holds the --zap-* logging flags.
	Zap zap.Options
}

// Bind registers the flags on fs with their defaults.
func (f *Flags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.MetricsAddr, "metrics-bind-address", ":8080", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	fs.BoolVar(&f.MetricsSecure, "metrics-secure", true, "Serve metrics over HTTPS to clients Kubernetes authenticates and "+
		"authorizes for GET /metrics (TokenReview, SubjectAccessReview); false serves plain HTTP to anyone.")
	fs.StringVar(&f.MetricsCertDir, "metrics-cert-dir", "", "Directory with tls.crt and tls.key for the metrics endpoint "+
		"(reloaded when they change); empty uses a self-signed certificate made at start.")
	fs.StringVar(&f.ProbeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	fs.StringVar(&f.PprofAddr, "pprof-bind-address", "0", "Address Go's /debug/pprof endpoints bind to (profiling); 0 disables them.")
	fs.BoolVar(&f.LeaderElect, "leader-elect", true, "Elect a leader so that only one replica reconciles at a time.")
	fs.StringVar(&f.LeaderNS, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the pod's namespace).")
	fs.DurationVar(&f.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "Duration of the leader election lease.")
	o := &f.Controllers
	fs.StringVar(&o.HookSidecarImage, "hook-sidecar-image", "",
		"runpolicy's hook sidecar image, added to VMI templates (hooks.kubevirt.io/hookSidecars) as --hook-sidecar says; empty adds none.")
	fs.StringVar(&f.SidecarMode, "hook-sidecar", string(policy.SidecarAuto),
		"When to add the hook sidecar: auto (while KubeVirt's Sidecar feature gate is on), true (always; KubeVirt refuses "+
			"the VMs without the gate) or false (never: guest reboots stay inside the guest).")
	fs.DurationVar(&o.Backoff.Base, "restart-backoff-base", policy.DefaultBackoff.Base,
		"First delay before restarting an AlwaysOnUntilStoppedManually VM after consecutive failures; it doubles each time.")
	fs.DurationVar(&o.Backoff.Max, "restart-backoff-max", policy.DefaultBackoff.Max, "Longest restart backoff delay.")
	fs.DurationVar(&o.OperationTTL, "vmop-ttl", vmop.DefaultTTL,
		"How long finished VirtualMachineOperations are kept after they finished; a negative value keeps them.")
	fs.IntVar(&o.OperationsPerVM, "vmop-max-per-vm", vmop.DefaultMaxPerVM,
		"How many finished VirtualMachineOperations are kept per VM (the newest); a negative value means no limit.")
	fs.DurationVar(&o.OperationTimeout, "vmop-timeout", vmop.DefaultTimeout,
		"How long a VirtualMachineOperation may wait for KubeVirt to reach its target state after accepting its signal "+
			"before it fails with reason TimedOut; a negative value waits for ever.")
	fs.IntVar(&o.Workers, "workers", controllers.DefaultWorkers, "How many VMs are reconciled at once.")
	fs.IntVar(&o.MaxConcurrentStarts, "max-concurrent-starts", 0,
		"How many VMs runpolicy lets start at once: the others wait their turn (phase Pending, Ready reason "+
			"WaitingForStartSlot), restarts after a guest reset or a failure first, then by spec.startOrder; 0 means no cap.")
	fs.StringVar(&f.RestartRequest, "restart-request", string(vm.RestartViaStateChangeRequest),
		"How a restart asks KubeVirt for the new VMI: state-change-request (write KubeVirt's Start request into "+
			"the KubeVirt VM's status once virt-controller saw the VMI end, and delete the ended VMI) or start-subresource (KubeVirt's start subresource, like virtctl start).")
	f.Zap.BindFlags(fs) // --zap-devel, --zap-encoder, --zap-log-level, --zap-stacktrace-level, --zap-time-encoding
}

// Parse parses args (the operator's command line without the program name, e.g. a Deployment's container args)
// as the operator does.
func Parse(args []string) (*Flags, error) {
	f := &Flags{}
	fs := flag.NewFlagSet("runpolicy-controller", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Bind(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("arguments the operator does not take: %q", fs.Args())
	}
	return f, nil
}

// Error is a flag whose value the operator cannot use.
type Error struct {
	Flag string
	Err  error
}

func (e *Error) Error() string { return "bad --" + e.Flag + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// Options returns the reconcilers' options the flags set; an *Error names a flag with a value it cannot use.
func (f *Flags) Options() (controllers.Options, error) {
	opts := f.Controllers
	mode, err := policy.ParseSidecarMode(f.SidecarMode)
	if err != nil {
		return opts, &Error{Flag: "hook-sidecar", Err: err}
	}
	opts.HookSidecarMode = mode
	if opts.MaxConcurrentStarts < 0 {
		return opts, &Error{Flag: "max-concurrent-starts", Err: fmt.Errorf("%d is negative (0 means no cap)", opts.MaxConcurrentStarts)}
	}
	switch rr := vm.RestartRequest(f.RestartRequest); rr {
	case vm.RestartViaStateChangeRequest, vm.RestartViaStartSubresource:
		opts.RestartRequest = rr
	default:
		return opts, &Error{Flag: "restart-request",
			Err: fmt.Errorf("%q is neither %s nor %s", rr, vm.RestartViaStateChangeRequest, vm.RestartViaStartSubresource)}
	}
	return opts, nil
}

// ManagerOptions returns the manager's settings the flags give.
func (f *Flags) ManagerOptions() ctrl.Options {
	lease := f.LeaseDuration
	return ctrl.Options{
		Scheme:                  controllers.NewScheme(),
		Cache:                   controllers.CacheOptions(),
		Metrics:                 MetricsOptions(f.MetricsAddr, f.MetricsSecure, f.MetricsCertDir),
		HealthProbeBindAddress:  f.ProbeAddr,
		PprofBindAddress:        f.PprofAddr,
		LeaderElection:          f.LeaderElect,
		LeaderElectionID:        LeaderElectionID,
		LeaderElectionNamespace: f.LeaderNS,
		LeaseDuration:           &lease,
		// Hand the lease over on SIGTERM (a rolling update) instead of letting the next replica wait for it to
		// expire; safe because the process exits as soon as the manager has stopped.
		LeaderElectionReleaseOnCancel: true,
	}
}

// MetricsOptions serves the metrics endpoint the way kubebuilder's scaffolding does: over HTTPS, to clients that
// Kubernetes authenticates and authorizes for GET /metrics (the chart's metrics-reader ClusterRole), unless secure
// is false; an unauthenticated client gets 401, as from kube-apiserver (internal/metricsauth).
func MetricsOptions(addr string, secure bool, certDir string) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr, SecureServing: secure, CertDir: certDir}
	if secure {
		o.FilterProvider = metricsauth.Filter
	}
	return o
}
