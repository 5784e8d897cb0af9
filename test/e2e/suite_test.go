//go:build !unit

// Package e2e runs the whole operator against the offline test cluster with KubeVirt's real virt-api and
// virt-controller (Sidecar gate on) and the simulated node (test/kubevirt): operator restarts in the middle of a
// restart, a Stop during one, KubeVirt's Sidecar gate, forged pods, restart windows (every policy after each guest
// event runs on the real node: test/node; docs/testing.md says what is still simulated, and why). The operator runs as the Helm
// chart installs it (test/chartrbac): its ServiceAccount's token under the chart's RBAC and admission policies,
// with the chart's Deployment args.
package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/fault"
	kvnode "github.com/runpolicy/runpolicy/test/kubevirt"
)

const hookImage = "registry.example/runpolicy/hook-sidecar:e2e"

var (
	env *cluster.Env
	// k8s is the cluster admin: the users of these tests.
	k8s client.Client
	// kubeVirt writes as KubeVirt's virt-controller, for specs that make the state KubeVirt would leave (the chart's
	// admission policies let only KubeVirt and the operator write an owned KubeVirt VM's status).
	kubeVirt client.Client
	node     *kvnode.Node
	chartOp  *chartrbac.Operator
	lc       *fault.Lifecycle
	op       *operator
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "runpolicy e2e (envtest + real KubeVirt control plane + simulated node)")
}

var _ = BeforeSuite(func() {
	ctrl.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(120 * time.Second) // generous: two envtest suites share 2 cores in `make test`
	SetDefaultEventuallyPollingInterval(200 * time.Millisecond)

	var err error
	env, err = cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	Expect(err).NotTo(HaveOccurred())
	k8s = env.Client
	asKubeVirt := rest.CopyConfig(env.Config)
	asKubeVirt.Impersonate = rest.ImpersonationConfig{UserName: cluster.ControllerServiceAccount, Groups: cluster.ServiceAccountGroups}
	kubeVirt, err = client.New(asKubeVirt, client.Options{Scheme: env.Scheme})
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	DeferCleanup(cancel)
	node, err = kvnode.Start(ctx, env.Config, kvnode.Options{AuditLog: env.AuditLog, HookSidecarImage: hookImage})
	Expect(err).NotTo(HaveOccurred())

	// The operator runs as the chart installs it: its ServiceAccount's token, RBAC and admission policies, and the
	// Deployment's args (test settings as chart values).
	chartOp, err = chartrbac.Install(ctx, env, append(chartrbac.HookSidecarImage(hookImage),
		append(chartrbac.SingleReplica, "restartBackoff.base=1s", "restartBackoff.max=4s")...)...)
	Expect(err).NotTo(HaveOccurred())
	real, err := lifecycle.NewClient(chartOp.Config)
	Expect(err).NotTo(HaveOccurred())
	lc = &fault.Lifecycle{Client: real}
	op = &operator{}
	op.start()
})

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		env.MarkFailed()
		GinkgoWriter.Printf("logs of the test cluster's processes: %v\n", env.Logs())
	}
})

var _ = AfterSuite(func() {
	if op != nil {
		op.stop()
	}
	if node != nil {
		Expect(node.Stop()).To(Succeed())
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// operator runs runpolicy's manager in-process, and can be stopped and started again like a crashed pod.
type operator struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

func (o *operator) start() {
	o.mu.Lock()
	defer o.mu.Unlock()
	mgr, opts, err := chartOp.Manager()
	Expect(err).NotTo(HaveOccurred())
	opts.Lifecycle = lc
	Expect(controllers.Setup(mgr, opts)).To(Succeed())
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel, o.done = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(ctx)).To(Succeed())
	}(o.done)
}

// crash cancels the manager without waiting: safe to call from inside a reconcile.
func (o *operator) crash() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cancel()
}

// stopped tells whether the manager has exited.
func (o *operator) stopped() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

func (o *operator) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cancel == nil {
		return
	}
	o.cancel()
	<-o.done
}

func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"}}
	Expect(k8s.Create(ctx, ns)).To(Succeed())
	return ns.Name
}
