// Command controller is the runpolicy operator: it runs the runpolicy.io reconcilers in one manager.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/internal/version"
)

// defaultGCPercent is the Go GC target used unless GOGC is set. The operator's live heap is mostly its informer
// caches, which grow with the number of VMs; half of Go's default headroom (100) keeps its peak memory near 1.5×
// that instead of 2× for a little more GC CPU (measured with make bench: peak RSS 71 → 57 MiB at 1,000 VMs).
const defaultGCPercent = 50

// memoryLimitEnv names the variable the Helm chart fills with the container's memory limit in bytes (Downward API).
// Unless GOMEMLIMIT is set, 90% of it becomes Go's soft memory limit, so that the GC works harder before the
// container is OOM-killed rather than after.
const memoryLimitEnv = "RUNPOLICY_MEMORY_LIMIT"

// softMemoryLimit is the Go memory limit derived from the environment, if any.
func softMemoryLimit(getenv func(string) string) (int64, bool) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, false // the runtime already took it
	}
	limit, err := strconv.ParseInt(getenv(memoryLimitEnv), 10, 64)
	if err != nil || limit <= 0 {
		return 0, false
	}
	return limit / 10 * 9, true
}

// MetricsOptions serves the metrics endpoint the way kubebuilder's scaffolding does: over HTTPS, to clients that
// Kubernetes authenticates and authorizes for GET /metrics (the chart's metrics-reader ClusterRole), unless secure
// is false.
func MetricsOptions(addr string, secure bool, certDir string) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr, SecureServing: secure, CertDir: certDir}
	if secure {
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if limit, ok := softMemoryLimit(os.Getenv); ok {
		debug.SetMemoryLimit(limit)
	}
	var (
		metricsAddr, probeAddr, pprofAddr, leaderNS string
		metricsCertDir                              string
		leaderElect, metricsSecure                  bool
		opts                                        controllers.Options
		leaseDuration                               time.Duration
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.BoolVar(&metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS to clients Kubernetes authenticates and "+
		"authorizes for GET /metrics (TokenReview, SubjectAccessReview); false serves plain HTTP to anyone.")
	flag.StringVar(&metricsCertDir, "metrics-cert-dir", "", "Directory with tls.crt and tls.key for the metrics endpoint "+
		"(reloaded when they change); empty uses a self-signed certificate made at start.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address Go's /debug/pprof endpoints bind to (profiling); 0 disables them.")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Elect a leader so that only one replica reconciles at a time.")
	flag.StringVar(&leaderNS, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the pod's namespace).")
	flag.DurationVar(&leaseDuration, "leader-election-lease-duration", 15*time.Second, "Duration of the leader election lease.")
	flag.StringVar(&opts.HookSidecarImage, "hook-sidecar-image", "",
		"runpolicy's hook sidecar image, added to VMI templates (hooks.kubevirt.io/hookSidecars) as --hook-sidecar says; empty adds none.")
	sidecarMode := flag.String("hook-sidecar", string(policy.SidecarAuto),
		"When to add the hook sidecar: auto (while KubeVirt's Sidecar feature gate is on), true (always; KubeVirt refuses "+
			"the VMs without the gate) or false (never: guest reboots stay inside the guest).")
	flag.DurationVar(&opts.Backoff.Base, "restart-backoff-base", policy.DefaultBackoff.Base,
		"First delay before restarting an AlwaysOnUntilStoppedManually VM after consecutive failures; it doubles each time.")
	flag.DurationVar(&opts.Backoff.Max, "restart-backoff-max", policy.DefaultBackoff.Max, "Longest restart backoff delay.")
	flag.DurationVar(&opts.OperationTTL, "vmop-ttl", vmop.DefaultTTL,
		"How long finished VirtualMachineOperations are kept after they finished; a negative value keeps them.")
	flag.IntVar(&opts.OperationsPerVM, "vmop-max-per-vm", vmop.DefaultMaxPerVM,
		"How many finished VirtualMachineOperations are kept per VM (the newest); a negative value means no limit.")
	flag.DurationVar(&opts.OperationTimeout, "vmop-timeout", vmop.DefaultTimeout,
		"How long a VirtualMachineOperation may wait for KubeVirt to reach its target state after accepting its signal "+
			"before it fails with reason TimedOut; a negative value waits for ever.")
	flag.IntVar(&opts.Workers, "workers", controllers.DefaultWorkers, "How many VMs are reconciled at once.")
	restartRequest := flag.String("restart-request", string(vm.RestartViaStateChangeRequest),
		"How a restart asks KubeVirt for the new VMI: state-change-request (write KubeVirt's [Stop, Start] requests into "+
			"the KubeVirt VM's status and delete the ended VMI) or start-subresource (KubeVirt's start subresource, like virtctl start).")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine) // --zap-devel, --zap-encoder, --zap-log-level, --zap-stacktrace-level, --zap-time-encoding
	flag.Parse()                        // --kubeconfig is registered by controller-runtime
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")
	log.Info("Starting runpolicy", "version", version.Version)
	mode, err := policy.ParseSidecarMode(*sidecarMode)
	if err != nil {
		log.Error(err, "Bad --hook-sidecar")
		os.Exit(2)
	}
	opts.HookSidecarMode = mode
	switch rr := vm.RestartRequest(*restartRequest); rr {
	case vm.RestartViaStateChangeRequest, vm.RestartViaStartSubresource:
		opts.RestartRequest = rr
	default:
		log.Error(fmt.Errorf("%q is neither %s nor %s", rr, vm.RestartViaStateChangeRequest, vm.RestartViaStartSubresource), "Bad --restart-request")
		os.Exit(2)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "Loading the kubeconfig failed")
		os.Exit(1)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  controllers.NewScheme(),
		Cache:                   controllers.CacheOptions(),
		Metrics:                 MetricsOptions(metricsAddr, metricsSecure, metricsCertDir),
		HealthProbeBindAddress:  probeAddr,
		PprofBindAddress:        pprofAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "runpolicy-controller.runpolicy.io",
		LeaderElectionNamespace: leaderNS,
		LeaseDuration:           &leaseDuration,
		// Hand the lease over on SIGTERM (a rolling update) instead of letting the next replica wait for it to
		// expire; safe because the process exits as soon as the manager has stopped.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "Creating the manager failed")
		os.Exit(1)
	}
	if err := controllers.Setup(mgr, opts); err != nil {
		log.Error(err, "Setting up the controllers failed")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "Adding the health check failed")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "Adding the ready check failed")
		os.Exit(1)
	}
	log.Info("Starting the manager", "leaderElection", leaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "The manager stopped with an error")
		os.Exit(1)
	}
}
