//go:build !unit

package vm_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/test/cluster"
)

const hookImage = "registry.example/runpolicy/hook-sidecar:test"

// etcdLimit is the test etcd's --max-request-bytes.
const etcdLimit = "262144"

var (
	env    *cluster.Env
	k8s    client.Client
	cancel context.CancelFunc
)

func TestVMController(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "VM controller (envtest)")
}

var _ = BeforeSuite(func() {
	ctrl.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)

	var err error
	// etcd refuses requests over 256 KiB here (1.5 MiB by default), so that an object at its size limit is cheap.
	env, err = cluster.Start(cluster.Options{GarbageCollector: true, EtcdArgs: map[string][]string{"max-request-bytes": {etcdLimit}}})
	Expect(err).NotTo(HaveOccurred())
	k8s = env.Client
	// KubeVirt's configuration as virt-operator keeps it: the KubeVirt CR, here with the Sidecar feature gate on
	// (the degraded-mode specs turn it off and back on).
	setKubeVirtConfig(context.Background(), "v1.8.0", "Sidecar")

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  env.Scheme,
		Cache:   controllers.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	Expect(err).NotTo(HaveOccurred())
	Expect(controllers.Setup(mgr, controllers.Options{HookSidecarImage: hookImage})).To(Succeed())
	var ctx context.Context
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// newNamespace creates a namespace for one test.
func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "vm-"}}
	Expect(k8s.Create(ctx, ns)).To(Succeed())
	return ns.Name
}
