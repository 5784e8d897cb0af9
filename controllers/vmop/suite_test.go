//go:build !unit

package vmop_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/controllers/vm"
	"github.com/runpolicy/runpolicy/controllers/vmop"
	"github.com/runpolicy/runpolicy/internal/lifecycle"
	"github.com/runpolicy/runpolicy/internal/policy"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

var (
	env     *cluster.Env
	k8s     client.Client
	node    *kubevirt.Node
	lc      *lifecycle.Client
	suiteOp *operator
)

func TestVMOPController(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "VirtualMachineOperation controller (envtest + real KubeVirt control plane + simulated node)")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	ctrl.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)

	var err error
	env, err = cluster.Start(cluster.Options{KubeVirt: &cluster.KubeVirtOptions{}})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(env.Stop)
	k8s = env.Client

	node, err = kubevirt.Start(context.Background(), env.Config, kubevirt.Options{AuditLog: env.AuditLog})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(node.Stop)
	lc, err = lifecycle.NewClient(env.Config)
	Expect(err).NotTo(HaveOccurred())

	// The VM controller runs for the whole suite; the VMOP controller runs in its own manager so that tests can
	// stop ("crash") and restart it.
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  env.Scheme,
		Cache:   controllers.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	Expect(err).NotTo(HaveOccurred())
	Expect((&vm.Reconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(), // as controllers.Setup: the cache holds trimmed templates (CacheOptions)
		Recorder:  mgr.GetEventRecorder("runpolicy-controller"),
		Lifecycle: lc,
		Backoff:   policy.DefaultBackoff,
	}).SetupWithManager(mgr)).To(Succeed())
	vmCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(vmCtx)).To(Succeed())
	}()
	DeferCleanup(func() { cancel(); <-done })

	suiteOp = startOperator(lc, nil)
	DeferCleanup(func() { suiteOp.stop() })
}, NodeTimeout(5*time.Minute))

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		env.MarkFailed()
		GinkgoWriter.Printf("logs of the test cluster's processes: %v\n", env.Logs())
	}
})

// operator is one run of the VMOP controller in its own manager.
type operator struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startOperator runs the VMOP controller with the given Lifecycle; wrap, if set, wraps its client; tune, if
// given, adjusts the reconciler.
func startOperator(l lifecycle.Interface, wrap func(client.Client) client.Client, tune ...func(*vmop.Reconciler)) *operator {
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:     env.Scheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	Expect(err).NotTo(HaveOccurred())
	c := mgr.GetClient()
	if wrap != nil {
		c = wrap(c)
	}
	r := &vmop.Reconciler{
		Client:    c,
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("runpolicy-controller"),
		Lifecycle: l,
		TTL:       vmop.DefaultTTL,
		MaxPerVM:  vmop.DefaultMaxPerVM,
	}
	for _, f := range tune {
		f(r)
	}
	Expect(r.SetupWithManager(mgr)).To(Succeed())
	ctx, cancel := context.WithCancel(context.Background())
	op := &operator{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer GinkgoRecover()
		defer close(op.done)
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	return op
}

// stop cancels the manager and waits until it returned.
func (o *operator) stop() {
	o.cancel()
	Eventually(o.done).Should(BeClosed())
}

// crash is a switch that, once thrown, makes every write of the wrapped client fail and stops the manager: the
// process "dies" at that point, whatever it meant to do next is lost.
type crash struct {
	crashed atomic.Bool
	op      *operator
}

var errCrashed = errors.New("the operator crashed")

func (c *crash) now() {
	if c.crashed.CompareAndSwap(false, true) {
		go c.op.cancel()
	}
}

// crashingLifecycle sends the signal to KubeVirt, then crashes before the caller learns it went through.
type crashingLifecycle struct {
	lifecycle.Interface
	c *crash
}

func (l crashingLifecycle) Start(ctx context.Context, ns, name string) error {
	if err := l.Interface.Start(ctx, ns, name); err != nil {
		return err
	}
	l.c.now()
	return errCrashed
}

func (l crashingLifecycle) Stop(ctx context.Context, ns, name string, force bool) error {
	if err := l.Interface.Stop(ctx, ns, name, force); err != nil {
		return err
	}
	l.c.now()
	return errCrashed
}

func (l crashingLifecycle) Restart(ctx context.Context, ns, name string, force bool) error {
	if err := l.Interface.Restart(ctx, ns, name, force); err != nil {
		return err
	}
	l.c.now()
	return errCrashed
}

// overtakingLifecycle, after a Stop's stop went through, waits until the VM is stopped and starts it again (start
// subresource) before the caller learns the stop went through: a start that overtakes the Stop, as when
// virt-controller serves, from its informer's copy of the VM, a Start the Stop had removed through the API server.
// It returns once KubeVirt created the new VMI.
type overtakingLifecycle struct {
	lifecycle.Interface
	started chan struct{}
}

func (l overtakingLifecycle) Stop(ctx context.Context, ns, name string, force bool) error {
	if err := l.Interface.Stop(ctx, ns, name, force); err != nil {
		return err
	}
	select {
	case <-l.started: // only the first stop is overtaken
		return nil
	default:
	}
	defer GinkgoRecover()
	stoppedVM(ctx, ns, name)
	Eventually(func() error { return l.Interface.Start(ctx, ns, name) }).Should(Succeed()) // "underway" until the stop is done
	var vmi *kvv1.VirtualMachineInstance
	Eventually(func(g Gomega) {
		vmi = getVMI(ctx, ns, name)
		g.Expect(vmi).NotTo(BeNil())
		g.Expect(vmi.IsFinal()).To(BeFalse())
	}).Should(Succeed())
	close(l.started)
	return nil
}

// crashingClient refuses writes once crashed; with crashAfterInProgress it crashes right after writing an
// operation's InProgress status.
type crashingClient struct {
	client.Client
	c                    *crash
	crashAfterInProgress bool
}

func (w crashingClient) Status() client.SubResourceWriter {
	return crashingStatus{SubResourceWriter: w.Client.Status(), w: w}
}

func (w crashingClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	if w.c.crashed.Load() {
		return errCrashed
	}
	return w.Client.Delete(ctx, obj, opts...)
}

type crashingStatus struct {
	client.SubResourceWriter
	w crashingClient
}

func (s crashingStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	if s.w.c.crashed.Load() {
		return errCrashed
	}
	if err := s.SubResourceWriter.Update(ctx, obj, opts...); err != nil {
		return err
	}
	if op, ok := obj.(*v1alpha1.VirtualMachineOperation); ok && s.w.crashAfterInProgress && op.Status.Phase == v1alpha1.OperationInProgress {
		s.w.c.now()
	}
	return nil
}

func (s crashingStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	if s.w.c.crashed.Load() {
		return errCrashed
	}
	return s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

// --- helpers ---

func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "vmop-"}}
	Expect(k8s.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

func createVM(ctx context.Context, ns, name string, p v1alpha1.RunPolicy) {
	obj := &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.VirtualMachineSpec{
			RunPolicy: p,
			VirtualMachineSpec: kvv1.VirtualMachineSpec{
				Template: &kvv1.VirtualMachineInstanceTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
					Spec: kvv1.VirtualMachineInstanceSpec{
						Domain: kvv1.DomainSpec{Memory: &kvv1.Memory{Guest: ptr.To(resource.MustParse("128Mi"))}},
					},
				},
			},
		},
	}
	Expect(k8s.Create(ctx, obj)).To(Succeed())
}

func createOp(ctx context.Context, ns, name, vmName string, t v1alpha1.VirtualMachineOperationType, force bool) {
	op := &v1alpha1.VirtualMachineOperation{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1alpha1.VirtualMachineOperationSpec{VirtualMachineName: vmName, Type: t, Force: force},
	}
	ExpectWithOffset(1, k8s.Create(ctx, op)).To(Succeed())
}

func getOp(ctx context.Context, ns, name string) func(Gomega) *v1alpha1.VirtualMachineOperation {
	return func(g Gomega) *v1alpha1.VirtualMachineOperation {
		op := &v1alpha1.VirtualMachineOperation{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, op)).To(Succeed())
		return op
	}
}

func getVMI(ctx context.Context, ns, name string) *kvv1.VirtualMachineInstance {
	vmi := &kvv1.VirtualMachineInstance{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, vmi); err != nil {
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%v", err)
		return nil
	}
	return vmi
}

func vmPhase(ctx context.Context, ns, name string) func(Gomega) v1alpha1.VirtualMachinePhase {
	return func(g Gomega) v1alpha1.VirtualMachinePhase {
		obj := &v1alpha1.VirtualMachine{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj)).To(Succeed())
		return obj.Status.Phase
	}
}

// runningVMI waits until the VM reads Running and its VMI runs, and returns the VMI.
func runningVMI(ctx context.Context, ns, name string) *kvv1.VirtualMachineInstance {
	var vmi *kvv1.VirtualMachineInstance
	EventuallyWithOffset(1, func(g Gomega) {
		vmi = getVMI(ctx, ns, name)
		g.Expect(vmi).NotTo(BeNil())
		g.Expect(vmi.Status.Phase).To(Equal(kvv1.Running))
		g.Expect(vmi.DeletionTimestamp).To(BeNil())
		g.Expect(vmPhase(ctx, ns, name)(g)).To(Equal(v1alpha1.VirtualMachineRunning))
	}).Should(Succeed())
	return vmi
}

// stoppedVM waits until the VM reads Stopped with no running VMI.
func stoppedVM(ctx context.Context, ns, name string) {
	EventuallyWithOffset(1, func(g Gomega) {
		vmi := getVMI(ctx, ns, name)
		g.Expect(vmi == nil || vmi.IsFinal()).To(BeTrue(), "VMI %v", vmi)
		g.Expect(vmPhase(ctx, ns, name)(g)).To(Equal(v1alpha1.VirtualMachineStopped))
	}).Should(Succeed())
}

// restartCalls lists the restart subresource calls kube-apiserver answered for a VM (its audit log).
func restartCalls(ns, name string) []kubevirt.Call {
	var out []kubevirt.Call
	for _, c := range node.CallsFor(ns, name) {
		if c.Action == "restart" {
			out = append(out, c)
		}
	}
	return out
}
