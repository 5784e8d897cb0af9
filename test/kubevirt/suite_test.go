//go:build !unit

package kubevirt_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

var (
	env *cluster.Env
	kv  *kubevirt.Node
	k8s client.Client
	rc  rest.Interface
	ctx context.Context
	nsN atomic.Int32
)

const hookImage = "registry.example/runpolicy/hook-sidecar:test"

func TestNode(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(60 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	RunSpecs(t, "KubeVirt control plane + simulated node")
}

var _ = BeforeSuite(func() {
	var cancel context.CancelFunc
	ctx, cancel = context.WithCancel(context.Background())
	DeferCleanup(cancel)
	var err error
	env, err = cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(env.Stop)
	kv, err = kubevirt.Start(ctx, env.Config, kubevirt.Options{AuditLog: env.AuditLog, HookSidecarImage: hookImage})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(kv.Stop)
	k8s, err = client.New(env.Config, client.Options{Scheme: kubevirt.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	rc, err = kubevirt.NewSubresourceClient(env.Config)
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		env.MarkFailed()
		GinkgoWriter.Printf("KubeVirt logs: %v\n", env.Logs())
	}
})

func newNamespace() string {
	name := fmt.Sprintf("kv-%d", nsN.Add(1))
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	return name
}

const sidecarAnnotation = `[{"image":"` + hookImage + `","args":["--version","v1alpha2"]}]`

//nolint:unparam // every spec so far names its one VM "vm"; the helper takes the name like the others.
func newVM(ns, name string, rs virtv1.VirtualMachineRunStrategy) *virtv1.VirtualMachine {
	vm := &virtv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: virtv1.VirtualMachineSpec{
			RunStrategy: &rs,
			Template: &virtv1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"kubevirt.io/vm": name},
					Annotations: map[string]string{kubevirt.HookSidecarsAnnotation: sidecarAnnotation},
				},
				Spec: virtv1.VirtualMachineInstanceSpec{
					// virt-api refuses a VMI without memory
					Domain: virtv1.DomainSpec{Memory: &virtv1.Memory{Guest: ptr(resource.MustParse("128Mi"))}},
				},
			},
		},
	}
	Expect(k8s.Create(ctx, vm)).To(Succeed())
	return vm
}

// runningManualVM makes a namespace with a VM "vm" under runStrategy Manual, started and running with its first VMI.
func runningManualVM() string {
	ns := newNamespace()
	newVM(ns, "vm", virtv1.RunStrategyManual)
	ExpectWithOffset(1, put(ns, "vm", "start", nil)).To(Succeed())
	settle(ns, "vm", running, 1)
	return ns
}

func getVM(ns, name string) *virtv1.VirtualMachine {
	vm := &virtv1.VirtualMachine{}
	ExpectWithOffset(1, k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm)).To(Succeed())
	return vm
}

// getVMI returns nil when there is no VMI.
func getVMI(ns, name string) *virtv1.VirtualMachineInstance {
	vmi := &virtv1.VirtualMachineInstance{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
		ExpectWithOffset(1, apierrors.IsNotFound(err)).To(BeTrue(), "%v", err)
		return nil
	}
	return vmi
}

// state is what the tables compare: the VM's printableStatus and the current VMI's phase ("" = no VMI).
type state struct {
	Printable virtv1.VirtualMachinePrintableStatus
	VMIPhase  virtv1.VirtualMachineInstancePhase
}

func stateOf(ns, name string) state {
	st := state{Printable: getVM(ns, name).Status.PrintableStatus}
	if vmi := getVMI(ns, name); vmi != nil {
		st.VMIPhase = vmi.Status.Phase
		if vmi.DeletionTimestamp != nil {
			st.VMIPhase = "Deleting"
		}
	}
	return st
}

var (
	running = state{virtv1.VirtualMachineStatusRunning, virtv1.Running}
	stopped = state{virtv1.VirtualMachineStatusStopped, ""}
)

func succeededAndStopped() state { return state{virtv1.VirtualMachineStatusStopped, virtv1.Succeeded} }
func failedAndStopped() state    { return state{virtv1.VirtualMachineStatusStopped, virtv1.Failed} }

// settle waits until the VM reaches want and the number of VMIs created is wantVMIs, then checks it stays so.
//
//nolint:unparam // every spec so far names its one VM "vm"; the helper takes the name like the others.
func settle(ns, name string, want state, wantVMIs int) {
	EventuallyWithOffset(1, func() int { return kv.VMIsCreated(ns, name) }).Should(Equal(wantVMIs))
	EventuallyWithOffset(1, func() state { return stateOf(ns, name) }).Should(Equal(want))
	ConsistentlyWithOffset(1, func() state { return stateOf(ns, name) }, "1s").Should(Equal(want))
	ExpectWithOffset(1, kv.VMIsCreated(ns, name)).To(Equal(wantVMIs))
}

//nolint:unparam // every spec so far names its one VM "vm"; the helper takes the name like the others.
func put(ns, name, action string, body any) error {
	return kubevirt.PutVMSubresource(ctx, rc, ns, name, action, body)
}

func ptr[T any](v T) *T { return &v }

func typesUID(s string) types.UID { return types.UID(s) }

func clientKey(o client.Object) client.ObjectKey { return client.ObjectKeyFromObject(o) }
