//go:build !unit

package launcher_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	kvv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/runpolicy/runpolicy/api/v1alpha1"
	"github.com/runpolicy/runpolicy/controllers"
	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
	standin "github.com/runpolicy/runpolicy/test/kubevirt"
	"github.com/runpolicy/runpolicy/test/launcher"
)

const (
	chainHookImage  = "registry.example/runpolicy/hook-sidecar:chain"
	chainGuestImage = "registry.example/runpolicy/tiny-guest:chain"
	// chainTimeout bounds each wait of the full chain (TCG boots on a loaded 2-core machine); it is not asserted.
	chainTimeout = 3 * time.Minute
)

// TestFullChain runs the whole chain on real KubeVirt code: a runpolicy VM → the operator → real virt-api and
// virt-controller (VMI, launcher pod) → the node layer running the real virt-launcher, libvirt and QEMU with
// runpolicy's real hook sidecar → the tiny guest. A guest reboot comes back as a restart with the changed spec; a
// guest poweroff leaves the VM stopped.
func TestFullChain(t *testing.T) {
	e := launcher.Require(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	env, err := cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			env.MarkFailed()
			t.Logf("logs of the test cluster's processes: %v", env.Logs())
		}
		_ = env.Stop()
	})
	c := env.Client
	useEmulation(t, ctx, c)

	runner, err := launcher.NewRunner(launcher.RunnerOptions{Binaries: e.Binaries, HookSidecarImage: chainHookImage,
		HookSidecar: e.HookSidecar, GuestDir: e.GuestDir, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(runner.Close)
	node, err := standin.Start(ctx, env.Config, standin.Options{AuditLog: env.AuditLog, HookSidecarImage: chainHookImage,
		RealLauncher: runner})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop() })
	startOperator(t, ctx, env)

	t.Run("reboot restarts with the changed spec", func(t *testing.T) {
		ns := namespace(t, ctx, c)
		vm := guest.VM(ns, "rebooter", v1alpha1.RunPolicyManual, chainGuestImage, "reboot")
		if err := c.Create(ctx, vm); err != nil {
			t.Fatal(err)
		}
		// Manual: started once through KubeVirt; runpolicy then restarts it after each guest reboot.
		startVM(t, ctx, env, ns, vm.Name)
		first := waitVMI(t, ctx, c, ns, vm.Name, func(vmi *kvv1.VirtualMachineInstance) bool { return vmi.UID != "" })
		// The pending change: the next boot hangs instead of rebooting. The running VMI keeps action=reboot.
		setAction(t, ctx, c, ns, vm.Name, "hang")
		second := waitVMI(t, ctx, c, ns, vm.Name, func(vmi *kvv1.VirtualMachineInstance) bool {
			return vmi.UID != first.UID && vmi.Status.Phase == kvv1.Running && kernelArgs(vmi) == guest.Args("hang")
		})
		// lastShutdown is recorded with the restart's intent, restartCount once KubeVirt runs the new VMI (the
		// operator's bookkeeping may follow the new VMI's Running by a moment).
		got := waitRVM(t, ctx, c, ns, vm.Name, func(rvm *v1alpha1.VirtualMachine) bool {
			return rvm.Status.LastShutdown != nil && rvm.Status.LastShutdown.VMIUID == string(first.UID) &&
				rvm.Status.RestartCount >= 1
		})
		if s := got.Status.LastShutdown; s.Source != v1alpha1.ShutdownGuestReset {
			t.Errorf("lastShutdown of the first VMI = %s (%s), want %s", s.Source, s.Reason, v1alpha1.ShutdownGuestReset)
		}
		t.Logf("second VMI %s runs %q", second.UID, kernelArgs(second))
	})

	t.Run("poweroff stays stopped", func(t *testing.T) {
		ns := namespace(t, ctx, c)
		vm := guest.VM(ns, "poweroffer", v1alpha1.RunPolicyManual, chainGuestImage, "poweroff")
		if err := c.Create(ctx, vm); err != nil {
			t.Fatal(err)
		}
		startVM(t, ctx, env, ns, vm.Name)
		first := waitVMI(t, ctx, c, ns, vm.Name, func(vmi *kvv1.VirtualMachineInstance) bool { return vmi.UID != "" })
		got := waitRVM(t, ctx, c, ns, vm.Name, func(rvm *v1alpha1.VirtualMachine) bool {
			return rvm.Status.LastShutdown != nil && rvm.Status.LastShutdown.VMIUID == string(first.UID) &&
				rvm.Status.Phase == v1alpha1.VirtualMachineStopped
		})
		if s := got.Status.LastShutdown; s.Source != v1alpha1.ShutdownGuestShutdown {
			t.Errorf("lastShutdown = %s (%s), want %s", s.Source, s.Reason, v1alpha1.ShutdownGuestShutdown)
		}
		// Stopped stays stopped: no VMI other than the first one ever appears.
		if uids := node.VMIUIDs(ns, vm.Name); len(uids) != 1 {
			t.Errorf("VMIs created: %v, want only the first", uids)
		}
	})
}

// useEmulation sets the KubeVirt CR's developerConfiguration.useEmulation, as on a cluster without usable KVM:
// virt-controller then renders --allow-emulation for virt-launcher (TCG).
func useEmulation(t *testing.T, ctx context.Context, c client.Client) {
	t.Helper()
	kv := &kvv1.KubeVirt{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "kubevirt", Name: "kubevirt"}, kv); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(kv.DeepCopy())
	if kv.Spec.Configuration.DeveloperConfiguration == nil {
		kv.Spec.Configuration.DeveloperConfiguration = &kvv1.DeveloperConfiguration{}
	}
	kv.Spec.Configuration.DeveloperConfiguration.UseEmulation = true
	if err := c.Patch(ctx, kv, patch); err != nil {
		t.Fatal(err)
	}
}

// startOperator runs the operator in-process as the Helm chart installs it (test/chartrbac): its ServiceAccount's
// token under the chart's RBAC and admission policies, with the chart's Deployment args.
func startOperator(t *testing.T, ctx context.Context, env *cluster.Env) {
	t.Helper()
	chartOp, err := chartrbac.Install(ctx, env, append(chartrbac.HookSidecarImage(chainHookImage),
		append(chartrbac.SingleReplica, "restartBackoff.base=1s", "restartBackoff.max=4s")...)...)
	if err != nil {
		t.Fatal(err)
	}
	mgr, opts, err := chartOp.Manager()
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.Setup(mgr, opts); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
	})
}

func namespace(t *testing.T, ctx context.Context, c client.Client) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "chain-"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func kernelArgs(vmi *kvv1.VirtualMachineInstance) string {
	if fw := vmi.Spec.Domain.Firmware; fw != nil && fw.KernelBoot != nil {
		return fw.KernelBoot.KernelArgs
	}
	return ""
}

// startVM starts a Manual VM as a user does: KubeVirt's start subresource on the KubeVirt VM runpolicy owns, once
// it exists.
func startVM(t *testing.T, ctx context.Context, env *cluster.Env, ns, name string) {
	t.Helper()
	rc, err := standin.NewSubresourceClient(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, chainTimeout, true, func(ctx context.Context) (bool, error) {
		err := standin.PutVMSubresource(ctx, rc, ns, name, "start", nil)
		if err != nil {
			t.Logf("start %s/%s: %v", ns, name, err)
		}
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("start %s/%s: %v", ns, name, err)
	}
}

func setAction(t *testing.T, ctx context.Context, c client.Client, ns, name, action string) {
	t.Helper()
	vm := &v1alpha1.VirtualMachine{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(vm.DeepCopy())
	vm.Spec.Template.Spec.Domain.Firmware.KernelBoot.KernelArgs = guest.Args(action)
	if err := c.Patch(ctx, vm, patch); err != nil {
		t.Fatal(err)
	}
}

func waitVMI(t *testing.T, ctx context.Context, c client.Client, ns, name string,
	ok func(*kvv1.VirtualMachineInstance) bool) *kvv1.VirtualMachineInstance {
	t.Helper()
	var last *kvv1.VirtualMachineInstance
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, chainTimeout, true, func(ctx context.Context) (bool, error) {
		vmi := &kvv1.VirtualMachineInstance{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		last = vmi
		return ok(vmi), nil
	})
	if err != nil {
		if last != nil {
			t.Fatalf("VMI %s/%s: %v; last seen %s phase %s, kernel args %q", ns, name, err, last.UID, last.Status.Phase, kernelArgs(last))
		}
		t.Fatalf("VMI %s/%s: %v; never seen", ns, name, err)
	}
	return last
}

func waitRVM(t *testing.T, ctx context.Context, c client.Client, ns, name string,
	ok func(*v1alpha1.VirtualMachine) bool) *v1alpha1.VirtualMachine {
	t.Helper()
	var last *v1alpha1.VirtualMachine
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, chainTimeout, true, func(ctx context.Context) (bool, error) {
		vm := &v1alpha1.VirtualMachine{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
			return false, err
		}
		last = vm
		return ok(vm), nil
	})
	if err != nil {
		t.Fatalf("runpolicy VM %s/%s: %v; last status %+v", ns, name, err, last.Status)
	}
	return last
}
