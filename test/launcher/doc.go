// Package launcher runs KubeVirt's real virt-launcher for a launcher pod, in container-like views on this machine,
// with runpolicy's real hook sidecar beside it, and plays the node's part around it: the kubelet's (volumes,
// container views, termination messages) and virt-handler's (KubeVirt's own virt-handler client packages, through
// launcherctl).
//
// It never imports kubevirt.io/kubevirt (runpolicy's module does not depend on it). What needs KubeVirt's packages
// is in launcherctl (test/kubevirt/build/launcherctl), built by test/kubevirt/build.sh with virt-launcher and
// virt-launcher-monitor into bin/kubevirt/$KUBEVIRT_VERSION/, and driven here as a subprocess with JSON in and out.
//
// A container view is the host's root with:
//   - the image's files laid over it (a read-only overlay on each of the image's top-level directories), e.g.
//     the launcher image's virt-launcher, virt-launcher-monitor, libvirt configuration and /etc/passwd;
//   - its own mount, PID, UTS and IPC namespaces (virt-launcher-monitor SIGTERMs every qemu-system* in /proc on
//     exit: it must see only its own), a fresh /proc, its own /run, /tmp and /var/log, and a /dev with the usual
//     nodes and the termination log but without /dev/kvm (KubeVirt's --allow-emulation then runs QEMU with TCG);
//   - the pod's volumes at the container's volumeMounts, subPath included: the compute container sees the whole
//     hook-sidecar-sockets emptyDir at /var/run/kubevirt-hooks, each sidecar only its own hook-sidecar-N;
//   - the container's user (KubeVirt's non-root mode: uid and gid 107, fsGroup 107), capabilities and
//     no_new_privs, applied with util-linux's setpriv so that the entrypoint is PID 1 of its namespace.
//
// Start runs one pod; Runner runs pods as a node would: Run when the pod is bound (the kubelet), Sync once the VMI
// is Scheduled (virt-handler: SyncVirtualMachine, the VMI phase from each domain event as virt-handler computes it,
// DeleteDomain once final), Delete for the pod's deletion, and the containers' statuses once they exited.
// TestRealLauncherGuestEnd runs a pod rendered by virt-controller's own template code without a cluster: the hook
// sidecar's record of each way a guest ends, against KubeVirt's real virt-launcher. The whole chain on a cluster
// runs on the real node instead (test/node), with the kubelet and virt-handler themselves.
//
// Not simulated: the network (the VMIs run here have no interfaces; the views share the host's network
// namespace), cgroups and resource limits, image pulls, and the containers whose images are not given
// (guest-console-log, the kernel-boot container: its files are put where virt-handler mounts them).
package launcher
