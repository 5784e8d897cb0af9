// Package kubevirt is the simulated node of the test cluster: only what cannot run on this machine, following
// KubeVirt's code. KubeVirt's control plane is real: test/cluster runs KubeVirt's own virt-api (its APIServices and
// webhooks included) and virt-controller, built by build.sh, with everything virt-operator would create written by
// KubeVirt's generator code (build/manifests). This package adds the node they drive:
//
//   - the Node, as the kubelet registers it and virt-handler's heartbeat labels it (pkg/virt-handler/heartbeat:
//     kubevirt.io/schedulable=true, the cpu-manager labels, the kubevirt.io/heartbeat annotation, every minute);
//   - the scheduler and the kubelet for the virt-launcher pods real virt-controller renders: a Binding to the node,
//     the containers running (native-sidecar init containers such as guest-console-log too), Ready once the readiness
//     gate kubevirt.io/virtual-machine-unpaused that virt-controller sets is True; a pod being deleted has its
//     containers ended and is removed;
//   - virt-handler's VMI status (pkg/virt-handler/vm.go): Scheduled → Running once the pod runs, Succeeded or Failed
//     when the domain ends, written with virt-handler's identity (service account kubevirt:kubevirt-handler with the
//     user extra authentication.kubernetes.io/node-name=<node>; virt-api's VMI webhooks revert or refuse VMI status
//     written by anyone else);
//   - the guest, QEMU, libvirt and runpolicy's hook sidecar: GuestReboot, GuestPoweroff, GuestCrash end the launcher
//     pod as they would. The hook-sidecar-N container running Options.HookSidecarImage terminates with one
//     internal/shutdown Event line per QEMU SHUTDOWN event — guest-reset or guest-shutdown (guest:true) followed by
//     libvirt's host-signal —, compute exits 0 and the pod and VMI end Succeeded; a crash leaves no event, compute
//     exits 1 and both end Failed. A pod deleted while its VMI is being deleted (a stop through KubeVirt) leaves
//     guest-shutdown + host-signal (ACPI) and Succeeded, or host-signal alone and Failed with grace period 0; any
//     other deleted pod (DeleteLauncherPod) leaves host-signal alone and Failed. Without on_reboot=destroy (no
//     runpolicy sidecar in the pod, no rebootPolicy: Terminate) a reboot or reset stays inside the guest, as with
//     KubeVirt's default on_reboot=restart. FailNextStarts makes virt-handler fail VMIs before they run;
//   - CDI, which is not in scope: a DataVolume real virt-controller creates from a VM's dataVolumeTemplates gets a
//     Bound PVC and phase Succeeded.
//
// Usage:
//
//	env, _ := cluster.Start(cluster.Options{GarbageCollector: true,
//		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
//	node, _ := kubevirt.Start(ctx, env.Config, kubevirt.Options{AuditLog: env.AuditLog})
//	defer node.Stop()
//	rc, _ := kubevirt.NewSubresourceClient(env.Config)
//	err := kubevirt.PutVMSubresource(ctx, rc, ns, "vm1", "restart", &virtv1.RestartOptions{})
//	_ = node.GuestReboot(ctx, ns, "vm1")                   // also GuestPoweroff, GuestCrash, DeleteLauncherPod
//	n := node.VMIsCreated(ns, "vm1"); calls := node.CallsFor(ns, "vm1") // VMIs seen by a watch; audit-logged calls
//
// Deviation, kept from the stand-in this package replaces: on SIGTERM a real virt-launcher shuts its guest down over
// ACPI (pkg/virt-launcher: MarkGracefulShutdownVMI), so a real eviction most likely shows guest-shutdown where
// DeleteLauncherPod shows QEMU killed (host-signal alone).
//
// Not simulated: the real virt-launcher and QEMU (test/launcher runs them), live migration, hotplug, the guest agent,
// CDI's import.
package kubevirt
