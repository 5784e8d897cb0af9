package kubevirt

import (
	"context"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// HostReset resets the running VMI from outside, as virtctl reset does (virt-api → virt-handler → libvirt's
// virDomainReset, QMP system_reset): with on_reboot=destroy QEMU reports SHUTDOWN host-qmp-system-reset (shown with
// the real QEMU in internal/hooksidecar) and libvirt ends it; pod and VMI end Succeeded. virt-api's reset
// subresource itself cannot be called here: it forwards to virt-handler, which the node layer does not run. Without
// on_reboot=destroy (see GuestReboot) the guest resets in place.
func (n *Node) HostReset(ctx context.Context, namespace, vmName string) error {
	return n.reboot(ctx, namespace, vmName, shutdown.QEMUHostReset)
}
