package kubevirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// Options configure the stand-in.
type Options struct {
	// CertDir is the dir passed to APIServerArgs; its front-proxy CA authenticates kube-apiserver. Required.
	CertDir string
	// Namespace holds the virt-api Service the APIService points at. Default "kubevirt" (created if missing).
	Namespace string
	// NodeName is the node every launcher pod is bound to. Default "node01" (a Node object is created).
	NodeName string
	// StartFailureBackoff is the crash-loop delay after the n-th consecutive start failure (a VMI that ended
	// before reaching Running) for Always/RerunOnFailure/Once. KubeVirt uses 10s·n² plus jitter, max 300s;
	// the default here is n seconds, max 5s.
	StartFailureBackoff func(failCount int) time.Duration
	// Logger for the stand-in's controllers. Default: discard.
	Logger *logr.Logger
}

// Call is one request the subresource server answered.
type Call struct {
	Namespace, Name string
	// Action is start, stop or restart.
	Action string
	// User and Groups come from kube-apiserver's X-Remote-User / X-Remote-Group headers.
	User   string
	Groups []string
	// Body is the request body as sent (a StartOptions, StopOptions or RestartOptions JSON, or empty).
	Body []byte
	// Code is the HTTP status answered (202 Accepted on success).
	Code int
	// Message is the error message answered, if any.
	Message string
}

// StandIn is a running KubeVirt stand-in.
type StandIn struct {
	opts   Options
	client client.Client // uncached: every pass reads the current state
	cancel context.CancelFunc
	done   chan error
	srv    *http.Server

	mu            sync.Mutex
	calls         []Call
	vmisCreated   map[types.NamespacedName][]types.UID
	startFailures map[types.NamespacedName]int
}

// Scheme returns a scheme with the client-go types and kubevirt.io/v1.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = virtv1.AddToScheme(s)
	return s
}

// Start runs virt-controller, the node layer (virt-handler, scheduler, kubelet) and the subresource server
// (virt-api's start/stop/restart), registers the v1.subresources.kubevirt.io APIService and waits until
// kube-apiserver reports it Available. It stops when ctx is cancelled or Stop is called.
func Start(ctx context.Context, cfg *rest.Config, opts Options) (*StandIn, error) {
	if opts.CertDir == "" {
		return nil, errors.New("Options.CertDir is required (the dir given to APIServerArgs)")
	}
	if opts.Namespace == "" {
		opts.Namespace = "kubevirt"
	}
	if opts.NodeName == "" {
		opts.NodeName = "node01"
	}
	if opts.StartFailureBackoff == nil {
		opts.StartFailureBackoff = func(n int) time.Duration { return min(time.Duration(n)*time.Second, 5*time.Second) }
	}
	log := logr.Discard()
	if opts.Logger != nil {
		log = *opts.Logger
	}
	scheme := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	s := &StandIn{opts: opts, client: c, done: make(chan error, 1),
		vmisCreated: map[types.NamespacedName][]types.UID{}, startFailures: map[types.NamespacedName]int{}}

	if err := s.ensureNode(ctx); err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptrTo(true)},
	})
	if err != nil {
		return nil, err
	}
	fast := controller.Options{MaxConcurrentReconciles: 2}
	if err := ctrl.NewControllerManagedBy(mgr).Named("kubevirt-standin-vm").For(&virtv1.VirtualMachine{}).
		Owns(&virtv1.VirtualMachineInstance{}).WithOptions(fast).Complete(&vmController{s: s}); err != nil {
		return nil, err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("kubevirt-standin-vmi").For(&virtv1.VirtualMachineInstance{}).
		Owns(&corev1.Pod{}).WithOptions(fast).Complete(&vmiController{s: s}); err != nil {
		return nil, err
	}
	launcher := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[virtv1.AppLabel] == "virt-launcher" })
	if err := ctrl.NewControllerManagedBy(mgr).Named("kubevirt-standin-kubelet").
		For(&corev1.Pod{}, builder.WithPredicates(launcher)).WithOptions(fast).Complete(&kubelet{s: s}); err != nil {
		return nil, err
	}

	// The subresource server: 127.0.0.1 only, reached through an ExternalName Service "localhost".
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	caBundle, tlsConfig, err := s.serverTLS()
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	s.srv = &http.Server{Handler: s.handler(), TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.ServeTLS(ln, "", "") }()

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	go func() { s.done <- mgr.Start(runCtx) }()
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Stop()
		case <-runCtx.Done():
		}
	}()

	port := ln.Addr().(*net.TCPAddr).Port
	if err := s.register(ctx, int32(port), caBundle); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop stops the controllers and the server and removes the APIService (the Service and the node stay).
func (s *StandIn) Stop() error {
	s.mu.Lock()
	cancel := s.cancel
	s.cancel = nil
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	ctx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	_ = s.unregister(ctx)
	cancel()
	_ = s.srv.Shutdown(ctx)
	select {
	case err := <-s.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *StandIn) ensureNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: s.opts.NodeName, Labels: map[string]string{
		"kubernetes.io/hostname": s.opts.NodeName, "kubevirt.io/schedulable": "true"}}}
	if err := s.client.Create(ctx, node); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	now := metav1.Now()
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: now, LastTransitionTime: now}}
	return s.client.Status().Update(ctx, node)
}

// getVMI reads the VMI of that name, nil if there is none.
func (s *StandIn) getVMI(ctx context.Context, ns, name string) (*virtv1.VirtualMachineInstance, error) {
	vmi := &virtv1.VirtualMachineInstance{}
	if err := s.client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return vmi, nil
}

// launcherPods returns the VMI's virt-launcher pod as a list, empty when there is none: the pod named
// launcherPodName(vmi), read uncached, if its kubevirt.io=virt-launcher and kubevirt.io/created-by=<uid> labels are
// the VMI's. A GET by name rather than KubeVirt's LIST by label: kube-apiserver has no label index, so a LIST costs
// as much as the namespace has pods, and every VMI pass paying that made the benchmark quadratic in the VM count.
func (s *StandIn) launcherPods(ctx context.Context, vmi *virtv1.VirtualMachineInstance) ([]corev1.Pod, error) {
	pod := corev1.Pod{}
	if err := s.client.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: launcherPodName(vmi)}, &pod); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	if pod.Labels[virtv1.AppLabel] != "virt-launcher" || pod.Labels[virtv1.CreatedByLabel] != string(vmi.UID) {
		// an earlier VMI of the same name whose UID gave the same suffix: not this VMI's pod
		return nil, nil
	}
	return []corev1.Pod{pod}, nil
}

func (s *StandIn) recordVMICreated(vm *virtv1.VirtualMachine, vmi *virtv1.VirtualMachineInstance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := types.NamespacedName{Namespace: vm.Namespace, Name: vm.Name}
	s.vmisCreated[key] = append(s.vmisCreated[key], vmi.UID)
}

func (s *StandIn) takeStartFailure(vmi *virtv1.VirtualMachineInstance) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}
	if s.startFailures[key] <= 0 {
		return false
	}
	s.startFailures[key]--
	return true
}

// FailNextStarts makes the next n VMIs of that VM fail before reaching Running (virt-launcher exits with an
// error while the VMI is Scheduled), which is what KubeVirt's crash-loop backoff counts.
func (s *StandIn) FailNextStarts(namespace, vmName string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.startFailures[types.NamespacedName{Namespace: namespace, Name: vmName}] = n
}

// VMIsCreated is how many VMIs the stand-in's virt-controller created for that VM so far.
func (s *StandIn) VMIsCreated(namespace, vmName string) int {
	return len(s.VMIUIDs(namespace, vmName))
}

// VMIUIDs lists the UIDs of the VMIs created for that VM, oldest first.
func (s *StandIn) VMIUIDs(namespace, vmName string) []types.UID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.vmisCreated[types.NamespacedName{Namespace: namespace, Name: vmName}])
}

// Calls lists every subresource call answered so far, oldest first.
func (s *StandIn) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// CallsFor lists the subresource calls for one VM.
func (s *StandIn) CallsFor(namespace, vmName string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Namespace == namespace && c.Name == vmName {
			out = append(out, c)
		}
	}
	return out
}

func (s *StandIn) recordCall(c Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
}

// runningLauncher returns the Running VMI of the VM and its running launcher pod.
func (s *StandIn) runningLauncher(ctx context.Context, ns, vmName string) (*virtv1.VirtualMachineInstance, *corev1.Pod, error) {
	vmi, err := s.getVMI(ctx, ns, vmName)
	if err != nil {
		return nil, nil, err
	}
	if vmi == nil || vmi.Status.Phase != virtv1.Running || vmi.DeletionTimestamp != nil {
		return nil, nil, fmt.Errorf("VMI %s/%s is not running", ns, vmName)
	}
	pods, err := s.launcherPods(ctx, vmi)
	if err != nil {
		return nil, nil, err
	}
	for i := range pods {
		if pods[i].Status.Phase == corev1.PodRunning && pods[i].DeletionTimestamp == nil {
			return vmi, &pods[i], nil
		}
	}
	return nil, nil, fmt.Errorf("VMI %s/%s has no running virt-launcher pod", ns, vmName)
}

// GuestReboot makes the guest of the running VMI reboot with on_reboot=destroy: QEMU reports SHUTDOWN
// guest-reset, libvirt ends it (host-signal), virt-launcher exits 0, the pod and the VMI end Succeeded.
func (s *StandIn) GuestReboot(ctx context.Context, namespace, vmName string) error {
	return s.guestEnds(ctx, namespace, vmName, []string{"guest-reset", "host-signal"}, 0)
}

// GuestPoweroff makes the guest power itself off: SHUTDOWN guest-shutdown, then host-signal; pod and VMI
// end Succeeded.
func (s *StandIn) GuestPoweroff(ctx context.Context, namespace, vmName string) error {
	return s.guestEnds(ctx, namespace, vmName, []string{"guest-shutdown", "host-signal"}, 0)
}

// GuestCrash makes QEMU die without any SHUTDOWN event (the sidecar's termination message is empty);
// virt-launcher exits non-zero, the pod and the VMI end Failed.
func (s *StandIn) GuestCrash(ctx context.Context, namespace, vmName string) error {
	return s.guestEnds(ctx, namespace, vmName, nil, 1)
}

func (s *StandIn) guestEnds(ctx context.Context, ns, vmName string, reasons []string, exit int32) error {
	_, pod, err := s.runningLauncher(ctx, ns, vmName)
	if err != nil {
		return err
	}
	return s.terminatePod(ctx, pod, reasons, exit)
}

// DeleteLauncherPod deletes the running VMI's virt-launcher pod (default grace period), as an eviction or a user
// would. The fake kubelet ends it (QEMU killed: host-signal only) and removes it; the VMI then goes Failed.
func (s *StandIn) DeleteLauncherPod(ctx context.Context, namespace, vmName string) error {
	_, pod, err := s.runningLauncher(ctx, namespace, vmName)
	if err != nil {
		return err
	}
	return s.client.Delete(ctx, pod, client.Preconditions{UID: &pod.UID})
}

// LauncherPods lists the launcher pods of the VM's current VMI (empty when there is no VMI).
func (s *StandIn) LauncherPods(ctx context.Context, namespace, vmName string) ([]corev1.Pod, error) {
	vmi, err := s.getVMI(ctx, namespace, vmName)
	if err != nil || vmi == nil {
		return nil, err
	}
	return s.launcherPods(ctx, vmi)
}
