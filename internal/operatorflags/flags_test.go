package operatorflags

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/policy"
)

func TestDefaults(t *testing.T) {
	f, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := f.Options()
	if err != nil {
		t.Fatal(err)
	}
	want := controllers.Options{
		HookSidecarMode:  policy.SidecarAuto,
		Backoff:          policy.DefaultBackoff,
		OperationTTL:     vmop.DefaultTTL,
		OperationsPerVM:  vmop.DefaultMaxPerVM,
		OperationTimeout: vmop.DefaultTimeout,
		RestartRequest:   vm.RestartViaStateChangeRequest,
		Workers:          controllers.DefaultWorkers,
	}
	if !reflect.DeepEqual(opts, want) {
		t.Errorf("Options() = %+v, want %+v", opts, want)
	}
	mo := f.ManagerOptions()
	if !mo.LeaderElection || mo.LeaderElectionID != LeaderElectionID || *mo.LeaseDuration != 15*time.Second ||
		!mo.LeaderElectionReleaseOnCancel || mo.Metrics.BindAddress != ":8080" || !mo.Metrics.SecureServing ||
		mo.Metrics.FilterProvider == nil || mo.HealthProbeBindAddress != ":8081" || mo.PprofBindAddress != "0" {
		t.Errorf("ManagerOptions() = %+v", mo)
	}
}

// A later flag wins: a test appends its host's listen addresses to the chart's args.
func TestParse(t *testing.T) {
	f, err := Parse([]string{"--leader-elect=false", "--leader-election-namespace=ops", "--metrics-secure=false",
		"--hook-sidecar=false", "--hook-sidecar-image=registry.example/s:1", "--restart-backoff-base=1s",
		"--restart-backoff-max=4s", "--vmop-ttl=-1s", "--vmop-max-per-vm=3", "--vmop-timeout=1m", "--workers=2",
		"--max-concurrent-starts=5", "--restart-request=start-subresource", "--zap-log-level=info", "--zap-encoder=json",
		"--metrics-bind-address=:8080", "--metrics-bind-address=0"})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := f.Options()
	if err != nil {
		t.Fatal(err)
	}
	want := controllers.Options{
		HookSidecarImage:    "registry.example/s:1",
		HookSidecarMode:     policy.SidecarNever,
		Backoff:             policy.Backoff{Base: time.Second, Max: 4 * time.Second},
		OperationTTL:        -time.Second,
		OperationsPerVM:     3,
		OperationTimeout:    time.Minute,
		RestartRequest:      vm.RestartViaStartSubresource,
		Workers:             2,
		MaxConcurrentStarts: 5,
	}
	if !reflect.DeepEqual(opts, want) {
		t.Errorf("Options() = %+v, want %+v", opts, want)
	}
	mo := f.ManagerOptions()
	if mo.LeaderElection || mo.LeaderElectionNamespace != "ops" || mo.Metrics.BindAddress != "0" ||
		mo.Metrics.SecureServing || mo.Metrics.FilterProvider != nil {
		t.Errorf("ManagerOptions() = %+v", mo)
	}
}

func TestRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--workers=many"},
		{"--leader-elect=false", "positional"},
	} {
		if _, err := Parse(args); err == nil {
			t.Errorf("Parse(%q) took them", args)
		}
	}
	for name, args := range map[string][]string{
		"hook-sidecar":          {"--hook-sidecar=sometimes"},
		"restart-request":       {"--restart-request=reboot"},
		"max-concurrent-starts": {"--max-concurrent-starts=-1"},
	} {
		f, err := Parse(args)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Options()
		var bad *Error
		if !errors.As(err, &bad) || bad.Flag != name {
			t.Errorf("Options() with %q = %v, want an *Error for --%s", args, err, name)
		}
	}
}
