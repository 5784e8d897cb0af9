// Package kubevirt is a KubeVirt stand-in for integration tests: no real KubeVirt can run in the offline test
// cluster, so this package plays its parts against a real kube-apiserver (envtest), following KubeVirt v1.9's code.
//
//   - virt-controller, VirtualMachine half (kubevirt/kubevirt pkg/virt-controller/watch/vm/vm.go): VM → VMI per
//     spec.runStrategy (Always, RerunOnFailure, Once, Manual, Halted), status.stateChangeRequests (a Stop only
//     counts when its UID is the current VMI's), created/ready/runStrategy/startFailure/conditions/printableStatus,
//     the crash-loop backoff (delay from Options.StartFailureBackoff), finalizers, and the DataVolumes of
//     spec.dataVolumeTemplates (created with the VM as controller owner; CDI's import is not modelled: they are
//     Succeeded at once and the VMI does not wait for them).
//   - virt-controller, VMI half, and virt-handler (pkg/virt-controller/watch/vmi/vmi.go, pkg/virt-handler/vm.go):
//     the virt-launcher pod, phases Pending → Scheduling → Scheduled → Running → Succeeded/Failed, a vanished pod
//     fails the VMI, a deleted VMI is shut down (ACPI within the grace period, destroyed with grace 0).
//   - scheduler and kubelet: launcher pods are bound to Options.NodeName and reported Running; deleted pods are
//     finished and removed.
//   - virt-api (pkg/virt-api/rest/lifecycle.go): PUT virtualmachines/{start,stop,restart} of
//     subresources.kubevirt.io/v1 with KubeVirt's bodies, effects and refusals, served over HTTPS on 127.0.0.1
//     and reached through kube-apiserver's aggregation layer (APIService v1.subresources.kubevirt.io → ExternalName
//     Service kubevirt/virt-api → localhost:<port>).
//
// Usage:
//
//	args, _ := kubevirt.APIServerArgs(dir)              // front-proxy CA + client cert, kube-apiserver flags
//	env, _ := cluster.Start(cluster.Options{APIServerArgs: args})
//	kv, _ := kubevirt.Start(ctx, env.Config, kubevirt.Options{CertDir: dir})
//	defer kv.Stop()
//	rc, _ := kubevirt.NewSubresourceClient(env.Config)
//	err := kubevirt.PutVMSubresource(ctx, rc, ns, "vm1", "restart", &virtv1.RestartOptions{})
//	_ = kv.GuestReboot(ctx, ns, "vm1")                   // also GuestPoweroff, GuestCrash, DeleteLauncherPod
//	n := kv.VMIsCreated(ns, "vm1"); calls := kv.CallsFor(ns, "vm1") // who called what, with which answer
//
// The guest helpers end the launcher pod as QEMU, libvirt and the hook sidecar would: the sidecar container
// (hook-sidecar-0, present when the VMI template carries hooks.kubevirt.io/hookSidecars) terminates with one
// internal/shutdown Event line per QEMU SHUTDOWN event — guest-reset or guest-shutdown (guest:true) followed by
// libvirt's host-signal — and the pod and VMI end Succeeded; a crash leaves no event and ends Failed. A stop of a
// running VMI through KubeVirt (VMI deleted) leaves guest-shutdown + host-signal (ACPI), or host-signal alone when
// the grace period is 0; a deleted launcher pod leaves host-signal alone.
//
// Deviation: a launcher pod's name ends in 5 characters derived from its VMI's UID, where KubeVirt's generateName
// gets 5 random ones from kube-apiserver, so the stand-in reads the pod with a GET by name instead of KubeVirt's LIST
// by label, whose cost grows with the pods in the namespace (quadratic overall in the benchmark).
//
// Not modelled: instancetypes/preferences, CDI's import (DataVolumes are created, see above), live migration,
// pause, hotplug, RestartRequired, ControllerRevisions, the api-version annotations, firmware UUIDs, events, and
// KubeVirt's own SubjectAccessReview in virt-api (kube-apiserver still authorizes the subresource calls with RBAC
// before proxying them).
package kubevirt
