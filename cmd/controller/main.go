// Command controller is the runpolicy operator: it runs the runpolicy.io reconcilers in one manager.
package main

import (
	"errors"
	"flag"
	"os"
	"runtime/debug"
	"strconv"
	_ "time/tzdata" // time zones of power schedules and restart windows: the image has no zoneinfo

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/operatorflags"
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

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if limit, ok := softMemoryLimit(os.Getenv); ok {
		debug.SetMemoryLimit(limit)
	}
	var f operatorflags.Flags
	f.Bind(flag.CommandLine)
	flag.Parse() // --kubeconfig is registered by controller-runtime
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.Zap)))
	log := ctrl.Log.WithName("setup")
	log.Info("Starting runpolicy", "version", version.Version)
	opts, err := f.Options()
	if err != nil {
		var bad *operatorflags.Error
		if errors.As(err, &bad) {
			log.Error(bad.Err, "Bad --"+bad.Flag)
		} else {
			log.Error(err, "Bad flags")
		}
		os.Exit(2)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "Loading the kubeconfig failed")
		os.Exit(1)
	}
	mgr, err := ctrl.NewManager(cfg, f.ManagerOptions())
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
	log.Info("Starting the manager", "leaderElection", f.LeaderElect)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "The manager stopped with an error")
		os.Exit(1)
	}
}
