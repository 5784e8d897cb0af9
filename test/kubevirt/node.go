package kubevirt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
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

// KubeVirt's service account for virt-handler, and the user extra kube-apiserver gives a node-bound service-account
// token (virt-api's VMI update validator requires it of virt-handler: "Node restriction").
const (
	handlerUser      = "system:serviceaccount:kubevirt:kubevirt-handler"
	nodeNameExtraKey = "authentication.kubernetes.io/node-name"
)

// Options configure the node layer.
type Options struct {
	// NodeName is the node's name. Default "node01".
	NodeName string
	// HookSidecarImage is the image of runpolicy's hook sidecar: the hook-sidecar-N container running it is the one
	// that terminates with QEMU's SHUTDOWN events. Empty: every hook-sidecar-N container does.
	HookSidecarImage string
	// AuditLog is kube-apiserver's audit log with the subresources.kubevirt.io requests (test/cluster's
	// Env.AuditLog), read by Calls. Empty: Calls reports nothing.
	AuditLog string
	// Logger for the node layer's controllers. Default: discard.
	Logger *logr.Logger
}

// Node is the simulated node: kubelet, virt-handler and the guests.
type Node struct {
	opts    Options
	client  client.Client // admin: the kubelet's and CDI's writes, uncached reads
	handler client.Client // virt-handler's identity: VMI status
	cache   client.Reader
	cancel  context.CancelFunc
	done    chan error

	mu            sync.Mutex
	vmisCreated   map[types.NamespacedName][]types.UID
	startFailures map[types.NamespacedName]int
	ends          map[types.UID]bool
	pods          map[types.UID][]string // launcher pods (namespace/name) per VMI UID
}

// Scheme returns a scheme with the client-go types and kubevirt.io/v1.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = virtv1.AddToScheme(s)
	return s
}

// Start creates the Node and runs the kubelet, virt-handler and CDI parts against the cluster of cfg (an admin
// config; virt-handler's writes impersonate KubeVirt's kubevirt-handler service account bound to this node). It
// stops when ctx is cancelled or Stop is called.
func Start(ctx context.Context, cfg *rest.Config, opts Options) (*Node, error) {
	if opts.NodeName == "" {
		opts.NodeName = "node01"
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
	hcfg := rest.CopyConfig(cfg)
	hcfg.Impersonate = rest.ImpersonationConfig{
		UserName: handlerUser,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:kubevirt", "system:authenticated"},
		Extra:    map[string][]string{nodeNameExtraKey: {opts.NodeName}},
	}
	hc, err := client.New(hcfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	n := &Node{opts: opts, client: c, handler: hc, done: make(chan error, 1), vmisCreated: map[types.NamespacedName][]types.UID{},
		startFailures: map[types.NamespacedName]int{}, ends: map[types.UID]bool{},
		pods: map[types.UID][]string{}}
	if err := n.ensureNode(ctx); err != nil {
		return nil, err
	}

	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return nil, err
	}
	n.cache = mgr.GetClient()
	fast := controller.Options{MaxConcurrentReconciles: 4}
	launcherPod := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[virtv1.AppLabel] == "virt-launcher" })
	if err := ctrl.NewControllerManagedBy(mgr).Named("node-kubelet").
		For(&corev1.Pod{}, builder.WithPredicates(launcherPod)).WithOptions(fast).Complete(&kubelet{n: n}); err != nil {
		return nil, err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("node-virt-handler").For(&virtv1.VirtualMachineInstance{}).
		Owns(&corev1.Pod{}).WithOptions(fast).Complete(&virtHandler{n: n}); err != nil {
		return nil, err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("node-cdi").For(newDataVolume()).WithOptions(fast).
		Complete(&cdi{n: n}); err != nil {
		return nil, err
	}
	inf, err := mgr.GetCache().GetInformer(ctx, &virtv1.VirtualMachineInstance{})
	if err != nil {
		return nil, err
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: n.vmiAdded}); err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	go func() { n.done <- mgr.Start(runCtx) }()
	go n.heartbeat(runCtx)
	go func() {
		select {
		case <-ctx.Done():
			_ = n.Stop()
		case <-runCtx.Done():
		}
	}()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		_ = n.Stop()
		return nil, errors.New("node layer: caches did not sync")
	}
	return n, nil
}

// Stop stops the node layer's controllers (the Node object stays).
func (n *Node) Stop() error {
	n.mu.Lock()
	cancel := n.cancel
	n.cancel = nil
	n.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-n.done:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("node layer did not stop")
	}
}

// ensureNode registers the node as the kubelet does (Ready) and as virt-handler's first heartbeat leaves it
// (pkg/virt-handler/heartbeat: kubevirt.io/schedulable=true, the cpu-manager labels, kubevirt.io/heartbeat).
func (n *Node) ensureNode(ctx context.Context) error {
	// A kubelet registers its node with annotations (virt-handler's node-restriction ValidatingAdmissionPolicy
	// expects some).
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.opts.NodeName, Labels: map[string]string{
		"kubernetes.io/hostname": n.opts.NodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
		Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}}}
	if err := n.client.Create(ctx, node); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := n.client.Get(ctx, client.ObjectKeyFromObject(node), node); err != nil {
		return err
	}
	now := metav1.Now()
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: hostIP}, {Type: corev1.NodeHostName, Address: n.opts.NodeName}}
	node.Status.Capacity = corev1.ResourceList{corev1.ResourceCPU: mustQuantity("8"), corev1.ResourceMemory: mustQuantity("32Gi"), corev1.ResourcePods: mustQuantity("10000")}
	node.Status.Allocatable = node.Status.Capacity
	if err := n.client.Status().Update(ctx, node); err != nil {
		return err
	}
	return n.beat(ctx)
}

// beat is virt-handler's heartbeat patch, with virt-handler's identity.
func (n *Node) beat(ctx context.Context) error {
	now, err := metav1.Now().MarshalJSON()
	if err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"true",%q:"false",%q:"false"},"annotations":{%q:%s}}}`,
		virtv1.NodeSchedulable, virtv1.DeprecatedCPUManager, virtv1.CPUManager, virtv1.VirtHandlerHeartbeat, now)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.opts.NodeName}}
	return n.handler.Patch(ctx, node, client.RawPatch(types.StrategicMergePatchType, []byte(patch)))
}

// heartbeat repeats beat every minute, like virt-handler: virt-controller marks a node whose heartbeat is older
// than 5 minutes unschedulable and fails its VMIs.
func (n *Node) heartbeat(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = n.beat(ctx)
		}
	}
}

func (n *Node) vmiAdded(obj any) {
	vmi, ok := obj.(*virtv1.VirtualMachineInstance)
	if !ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}
	if !slices.Contains(n.vmisCreated[key], vmi.UID) {
		n.vmisCreated[key] = append(n.vmisCreated[key], vmi.UID)
	}
}

func (n *Node) recordEnd(vmi types.UID, forced bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.ends[vmi]; !ok {
		n.ends[vmi] = forced
	}
}

// EndedForced tells, once KubeVirt had the launcher pod of that VMI deleted (a stop, a restart, the VMI's deletion;
// ended is false before), whether it asked for no grace period: the VMI's terminationGracePeriodSeconds was 0
// (virt-api sets it for a stop with gracePeriod 0), or the pod was deleted with a grace period of at most 1 s (virt-api's
// forced restart; the audit log shows it even when virt-controller's own deletion of the pod came first).
func (n *Node) EndedForced(vmi types.UID) (forced, ended bool) {
	n.mu.Lock()
	forced, ended = n.ends[vmi]
	pods := slices.Clone(n.pods[vmi])
	n.mu.Unlock()
	if !ended || forced || n.opts.AuditLog == "" {
		return forced, ended
	}
	deleted, _ := virtAPIPodDeletes(n.opts.AuditLog)
	for _, p := range pods {
		if deleted[p] {
			return true, true
		}
	}
	return false, true
}

func (n *Node) recordPod(pod *corev1.Pod) {
	uid := types.UID(pod.Labels[virtv1.CreatedByLabel])
	key := pod.Namespace + "/" + pod.Name
	n.mu.Lock()
	defer n.mu.Unlock()
	if uid != "" && !slices.Contains(n.pods[uid], key) {
		n.pods[uid] = append(n.pods[uid], key)
	}
}

// VMIsCreated is how many VMIs of that name (a VM's VMIs carry its name) KubeVirt created so far, as seen by a
// watch since Start.
func (n *Node) VMIsCreated(namespace, vmName string) int {
	return len(n.VMIUIDs(namespace, vmName))
}

// VMIUIDs lists the UIDs of the VMIs of that name created so far, oldest first.
func (n *Node) VMIUIDs(namespace, vmName string) []types.UID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.vmisCreated[types.NamespacedName{Namespace: namespace, Name: vmName}])
}

// getVMI reads the VMI of that name past the cache, nil if there is none.
func (n *Node) getVMI(ctx context.Context, ns, name string) (*virtv1.VirtualMachineInstance, error) {
	vmi := &virtv1.VirtualMachineInstance{}
	if err := n.client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return vmi, nil
}

// launcherPods lists the VMI's virt-launcher pods (label kubevirt.io/created-by=<uid>, as virt-controller finds
// them) from r.
func launcherPods(ctx context.Context, r client.Reader, vmi *virtv1.VirtualMachineInstance) ([]corev1.Pod, error) {
	list := &corev1.PodList{}
	if err := r.List(ctx, list, client.InNamespace(vmi.Namespace), client.MatchingLabels{
		virtv1.AppLabel: "virt-launcher", virtv1.CreatedByLabel: string(vmi.UID)}); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// runningLauncher returns the Running VMI of that name and its running launcher pod.
func (n *Node) runningLauncher(ctx context.Context, ns, vmName string) (*virtv1.VirtualMachineInstance, *corev1.Pod, error) {
	vmi, err := n.getVMI(ctx, ns, vmName)
	if err != nil {
		return nil, nil, err
	}
	if vmi == nil || vmi.Status.Phase != virtv1.Running || vmi.DeletionTimestamp != nil {
		return nil, nil, fmt.Errorf("VMI %s/%s is not running", ns, vmName)
	}
	pods, err := launcherPods(ctx, n.client, vmi)
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
// guest-reset, libvirt ends it (host-signal), the sidecar and virt-launcher exit 0 (pod Succeeded) and virt-handler
// reports the domain Shutoff (VMI Succeeded).
// Without on_reboot=destroy — no runpolicy sidecar in the pod and no spec.domain.rebootPolicy: Terminate — KubeVirt's
// domain has on_reboot=restart: the guest reboots in place and nothing KubeVirt shows changes.
func (n *Node) GuestReboot(ctx context.Context, namespace, vmName string) error {
	return n.reboot(ctx, namespace, vmName, "guest-reset")
}

// reboot ends the VMI like a reboot (reason: guest-reset or host-qmp-system-reset) when the domain has
// on_reboot=destroy, else leaves it running.
func (n *Node) reboot(ctx context.Context, ns, vmName, reason string) error {
	vmi, pod, err := n.runningLauncher(ctx, ns, vmName)
	if err != nil {
		return err
	}
	if !n.hasHookSidecar(pod) && !rebootTerminates(vmi) {
		return nil
	}
	if err := n.terminatePod(ctx, pod, []string{reason, "host-signal"}, 0); err != nil {
		return err
	}
	return n.finishVMI(ctx, vmi, virtv1.Succeeded)
}

// hasHookSidecar tells whether the pod runs runpolicy's hook sidecar (Options.HookSidecarImage; any hook sidecar
// when that is empty), which sets on_reboot=destroy.
func (n *Node) hasHookSidecar(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if strings.HasPrefix(c.Name, HookSidecarContainerPrefix) && (n.opts.HookSidecarImage == "" || c.Image == n.opts.HookSidecarImage) {
			return true
		}
	}
	return false
}

func rebootTerminates(vmi *virtv1.VirtualMachineInstance) bool {
	p := vmi.Spec.Domain.RebootPolicy
	return p != nil && *p == virtv1.RebootPolicyTerminate
}

// GuestPoweroff makes the guest power itself off: SHUTDOWN guest-shutdown, then host-signal; pod and VMI end
// Succeeded.
func (n *Node) GuestPoweroff(ctx context.Context, namespace, vmName string) error {
	return n.guestEnds(ctx, namespace, vmName, []string{"guest-shutdown", "host-signal"}, 0, virtv1.Succeeded)
}

// GuestCrash makes QEMU die without any SHUTDOWN event (the sidecar's termination message is empty); virt-launcher
// exits non-zero (pod Failed) and virt-handler reports the domain Crashed (VMI Failed).
func (n *Node) GuestCrash(ctx context.Context, namespace, vmName string) error {
	return n.guestEnds(ctx, namespace, vmName, nil, 1, virtv1.Failed)
}

// FailNextStarts makes the next count VMIs of that name fail before they run: once virt-controller has
// scheduled one to this node, virt-launcher fails to start its domain (the pod ends Failed, no SHUTDOWN event) and
// virt-handler reports the VMI Failed. That is what KubeVirt's crash-loop backoff counts under runStrategy Always.
func (n *Node) FailNextStarts(namespace, vmName string, count int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.startFailures[types.NamespacedName{Namespace: namespace, Name: vmName}] = count
}

func (n *Node) takeStartFailure(vmi *virtv1.VirtualMachineInstance) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}
	if n.startFailures[key] <= 0 {
		return false
	}
	n.startFailures[key]--
	return true
}

func (n *Node) guestEnds(ctx context.Context, ns, vmName string, reasons []string, exit int32, phase virtv1.VirtualMachineInstancePhase) error {
	vmi, pod, err := n.runningLauncher(ctx, ns, vmName)
	if err != nil {
		return err
	}
	if err := n.terminatePod(ctx, pod, reasons, exit); err != nil {
		return err
	}
	return n.finishVMI(ctx, vmi, phase)
}

// DeleteLauncherPod deletes the running VMI's virt-launcher pod (default grace period), as an eviction or a user
// would. The kubelet ends it with QEMU killed (the sidecar sees host-signal only) and removes it; virt-handler
// reports the VMI Failed.
func (n *Node) DeleteLauncherPod(ctx context.Context, namespace, vmName string) error {
	_, pod, err := n.runningLauncher(ctx, namespace, vmName)
	if err != nil {
		return err
	}
	return n.client.Delete(ctx, pod, client.Preconditions{UID: &pod.UID})
}

// LauncherPods lists the launcher pods of the current VMI of that name (empty when there is none).
func (n *Node) LauncherPods(ctx context.Context, namespace, vmName string) ([]corev1.Pod, error) {
	vmi, err := n.getVMI(ctx, namespace, vmName)
	if err != nil || vmi == nil {
		return nil, err
	}
	return launcherPods(ctx, n.client, vmi)
}
