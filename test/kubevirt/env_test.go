package kubevirt_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// testEnv starts kube-apiserver + etcd with only KubeVirt's CRDs. It is a local stand-in for test/cluster, which
// imports the operator's controllers package; the stand-in's own tests must not depend on the operator compiling.
type testEnv struct {
	te     *envtest.Environment
	Config *rest.Config
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func startEnv(apiServerArgs map[string][]string) (*testEnv, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(repoRoot(), "bin", "k8s", "v1.37.2-etcd-v3.7.3")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return nil, fmt.Errorf("%s missing in %s: run test/cluster/build-assets.sh or set KUBEBUILDER_ASSETS", b, assets)
		}
	}
	opts := &envtest.CRDInstallOptions{Paths: []string{filepath.Join(repoRoot(), "test", "crds", "kubevirt"),
		filepath.Join(repoRoot(), "test", "crds", "cdi")}, ErrorIfPathMissing: true}
	if err := envtest.ReadCRDFiles(opts); err != nil {
		return nil, err
	}
	for _, crd := range opts.CRDs {
		if crd.Spec.Group != "kubevirt.io" {
			continue
		}
		for i := range crd.Spec.Versions {
			// controller-gen cannot know KubeVirt's CRDs have a status subresource
			crd.Spec.Versions[i].Subresources = &apiextv1.CustomResourceSubresources{Status: &apiextv1.CustomResourceSubresourceStatus{}}
		}
	}
	te := &envtest.Environment{BinaryAssetsDirectory: assets, CRDs: opts.CRDs}
	_ = os.Setenv("KUBEBUILDER_ASSETS", assets)
	api := te.ControlPlane.GetAPIServer()
	for k, v := range apiServerArgs {
		api.Configure().Set(k, v...)
	}
	cfg, err := te.Start()
	if err != nil {
		return nil, err
	}
	return &testEnv{te: te, Config: cfg}, nil
}

func (e *testEnv) Stop() error { return e.te.Stop() }
