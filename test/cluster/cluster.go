// Package cluster starts the offline test cluster: a real kube-apiserver and etcd (built from Go modules by
// build-assets.sh), runpolicy's and KubeVirt's CRDs, and optionally a real kube-controller-manager running the
// garbage collector, which envtest alone lacks.
package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
)

// Options configures Start.
type Options struct {
	// APIServerArgs are extra kube-apiserver flags (e.g. the aggregation layer's front-proxy settings).
	APIServerArgs map[string][]string
	// GarbageCollector starts a kube-controller-manager with the garbage collector and namespace controllers,
	// so that owner references act as on a real cluster.
	GarbageCollector bool
	// Output receives the kube-controller-manager's logs; nil discards them.
	Output *os.File
}

// Env is a running test cluster.
type Env struct {
	Environment *envtest.Environment
	Config      *rest.Config
	Client      client.Client
	Scheme      *k8sruntime.Scheme
	// Kubeconfig is the path of an admin kubeconfig for the cluster.
	Kubeconfig string

	dir  string
	kcm  *exec.Cmd
	done chan struct{}
}

// RepoRoot returns the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	assetsOnce sync.Once
	assetsDir  string
	assetsErr  error
)

// AssetsDir returns the folder holding kube-apiserver, etcd and kube-controller-manager: $KUBEBUILDER_ASSETS
// when it is complete, else whatever build-assets.sh builds (or finds cached) under bin/.
func AssetsDir() (string, error) {
	assetsOnce.Do(func() {
		if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" && complete(d) {
			assetsDir = d
			return
		}
		cmd := exec.Command(filepath.Join(RepoRoot(), "test", "cluster", "build-assets.sh"))
		cmd.Env = append(os.Environ(), "EXTRA=kube-controller-manager")
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			assetsErr = fmt.Errorf("building the test cluster binaries: %w", err)
			return
		}
		assetsDir = strings.TrimSpace(string(out))
	})
	return assetsDir, assetsErr
}

func complete(dir string) bool {
	for _, b := range []string{"kube-apiserver", "etcd", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return false
		}
	}
	return true
}

// CRDs returns runpolicy's CRDs (crds/), KubeVirt's (test/crds/kubevirt, generated from kubevirt.io/api), the
// latter completed with what controller-gen cannot know: the status subresource and short names, and CDI's
// DataVolume (test/crds/cdi, reduced to its names).
func CRDs() ([]*apiextv1.CustomResourceDefinition, error) {
	root := RepoRoot()
	opts := &envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(root, "crds"), filepath.Join(root, "test", "crds", "kubevirt"),
			filepath.Join(root, "test", "crds", "cdi")},
		ErrorIfPathMissing: true,
	}
	if err := envtest.ReadCRDFiles(opts); err != nil {
		return nil, err
	}
	crds := opts.CRDs
	short := map[string][]string{
		"virtualmachines.kubevirt.io":                  {"vm", "vms"},
		"virtualmachineinstances.kubevirt.io":          {"vmi", "vmis"},
		"virtualmachineinstancemigrations.kubevirt.io": {"vmim"},
	}
	for _, crd := range crds {
		if crd.Spec.Group != "kubevirt.io" {
			continue
		}
		crd.Spec.Names.ShortNames = short[crd.Name]
		for i := range crd.Spec.Versions {
			crd.Spec.Versions[i].Subresources = &apiextv1.CustomResourceSubresources{Status: &apiextv1.CustomResourceSubresourceStatus{}}
		}
	}
	return crds, nil
}

// Start brings the cluster up. Call Stop when done.
func Start(opts Options) (*Env, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	crds, err := CRDs()
	if err != nil {
		return nil, err
	}
	scheme := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{clientgoscheme.AddToScheme, kvv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	te := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDs:                  crds,
		Scheme:                scheme,
	}
	// envtest prefers $KUBEBUILDER_ASSETS over BinaryAssetsDirectory; make sure the complete folder wins.
	_ = os.Setenv("KUBEBUILDER_ASSETS", assets)
	api := te.ControlPlane.GetAPIServer()
	for k, v := range opts.APIServerArgs {
		api.Configure().Set(k, v...)
	}
	cfg, err := te.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	env := &Env{Environment: te, Config: cfg, Scheme: scheme}
	if env.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		_ = te.Stop()
		return nil, err
	}
	if env.dir, err = os.MkdirTemp("", "runpolicy-cluster-"); err != nil {
		_ = te.Stop()
		return nil, err
	}
	admin, err := te.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err == nil {
		var kc []byte
		if kc, err = admin.KubeConfig(); err == nil {
			env.Kubeconfig = filepath.Join(env.dir, "kubeconfig")
			err = os.WriteFile(env.Kubeconfig, kc, 0o600)
		}
	}
	if err == nil && opts.GarbageCollector {
		err = env.startControllerManager(assets, opts.Output)
	}
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return env, nil
}

func (e *Env) startControllerManager(assets string, out *os.File) error {
	cmd := exec.Command(filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+e.Kubeconfig,
		"--controllers=garbage-collector-controller,namespace-controller",
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	)
	var buf bytes.Buffer
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	} else {
		cmd.Stdout, cmd.Stderr = &buf, &buf
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting kube-controller-manager: %w", err)
	}
	e.kcm, e.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(e.done) }()
	select {
	case <-e.done:
		return fmt.Errorf("kube-controller-manager exited at start: %s", buf.String())
	case <-time.After(500 * time.Millisecond):
		return nil
	}
}

// Stop shuts the cluster down.
func (e *Env) Stop() error {
	var errs []error
	if e.kcm != nil && e.kcm.Process != nil {
		_ = e.kcm.Process.Kill()
		<-e.done
	}
	if e.Environment != nil {
		errs = append(errs, e.Environment.Stop())
	}
	if e.dir != "" {
		errs = append(errs, os.RemoveAll(e.dir))
	}
	return errors.Join(errs...)
}
