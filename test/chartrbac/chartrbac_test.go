package chartrbac

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runpolicy/runpolicy/internal/operatorflags"
	"github.com/runpolicy/runpolicy/internal/policy"
)

// kubeVersion is the cluster version the renders here assume (the test cluster's, test/cluster/build-assets.sh).
const kubeVersion = "1.37.2"

// The chart's Deployment args are the operator's flags: its own parser takes them, with the chart's defaults and
// with the values the tests set.
func TestDeploymentArgs(t *testing.T) {
	for _, tc := range []struct {
		name        string
		set         []string
		leaderElect bool
		image       string
		backoff     policy.Backoff
	}{
		{"defaults", nil, true, "ghcr.io/runpolicy/runpolicy-hook-sidecar:", policy.Backoff{Base: 10 * time.Second, Max: 5 * time.Minute}},
		{"as the tests run it",
			append(append(HookSidecarImage("registry.example/runpolicy/hook-sidecar:e2e"), SingleReplica...),
				"restartBackoff.base=1s", "restartBackoff.max=4s"),
			false, "registry.example/runpolicy/hook-sidecar:e2e", policy.Backoff{Base: time.Second, Max: 4 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifest, err := Render(kubeVersion, tc.set...)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decode(manifest)
			if err != nil {
				t.Fatal(err)
			}
			deploy, err := deploymentOf(objs)
			if err != nil {
				t.Fatal(err)
			}
			c := deploy.Spec.Template.Spec.Containers[0]
			f, err := operatorflags.Parse(c.Args)
			if err != nil {
				t.Fatal(err)
			}
			opts, err := f.Options()
			if err != nil {
				t.Fatal(err)
			}
			if f.LeaderElect != tc.leaderElect || f.LeaderNS != Namespace {
				t.Errorf("leader election %v in %q, want %v in %q", f.LeaderElect, f.LeaderNS, tc.leaderElect, Namespace)
			}
			if !strings.HasPrefix(opts.HookSidecarImage, tc.image) {
				t.Errorf("--hook-sidecar-image %q, want %q…", opts.HookSidecarImage, tc.image)
			}
			if opts.HookSidecarMode != policy.SidecarAuto || opts.Backoff != tc.backoff {
				t.Errorf("--hook-sidecar %q, backoff %+v; want auto, %+v", opts.HookSidecarMode, opts.Backoff, tc.backoff)
			}
			env, err := containerEnv(c)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(env, "RUNPOLICY_MEMORY_LIMIT=268435456") {
				t.Errorf("env %q lacks the container's memory limit (256Mi)", env)
			}
		})
	}
}

func TestHookSidecarImage(t *testing.T) {
	for image, want := range map[string][]string{
		"registry.example/hook:e2e":      {"hookSidecar.image.repository=registry.example/hook", "hookSidecar.image.tag=e2e"},
		"registry.example:5000/hook":     {"hookSidecar.image.repository=registry.example:5000/hook", "hookSidecar.image.tag="},
		"registry.example:5000/hook:dev": {"hookSidecar.image.repository=registry.example:5000/hook", "hookSidecar.image.tag=dev"},
	} {
		if got := HookSidecarImage(image); !slices.Equal(got, want) {
			t.Errorf("HookSidecarImage(%q) = %q, want %q", image, got, want)
		}
	}
}
