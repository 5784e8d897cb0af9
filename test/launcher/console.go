package launcher

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
)

// virtPrivateDir is KubeVirt's util.VirtPrivateDir: the compute container's mount of the pod's private volume, with
// one directory per VMI UID holding the serial console's socket and its log.
const virtPrivateDir = "/var/run/kubevirt-private"

// SerialConsole dials the VMI's serial console as virt-handler does for `virtctl console` (pkg/virt-handler/rest
// console.go): the unix socket virt-serial0 that QEMU binds at /var/run/kubevirt-private/<vmi uid>/ in the compute
// container (KubeVirt's ConsoleDomainConfigurator), reached here through the pod's private volume on the node.
// QEMU serves one client at a time and drops what the guest writes while none is connected (SerialConsoleLog keeps
// it).
func (p *Pod) SerialConsole() (net.Conn, error) {
	dir, err := p.consoleDir()
	if err != nil {
		return nil, err
	}
	// The volume's path on the node can be longer than a unix socket path may be: dial through the directory's
	// file descriptor.
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer func() { _ = d.Close() }()
	return net.Dial("unix", fmt.Sprintf("/proc/self/fd/%d/virt-serial0", d.Fd()))
}

// SerialConsoleLog is everything the guest wrote to its serial console so far: the virt-serial0-log file that
// libvirt writes beside the socket and KubeVirt's guest-console-log container tails (empty before the domain
// started).
func (p *Pod) SerialConsoleLog() ([]byte, error) {
	dir, err := p.consoleDir()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path.Join(dir, "virt-serial0-log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func (p *Pod) consoleDir() (string, error) {
	if p.cfg.VMI == nil || p.cfg.VMI.UID == "" {
		return "", errors.New("the pod's VMI has no UID")
	}
	compute := p.container("compute")
	if compute == nil {
		return "", errors.New("the pod has no compute container")
	}
	return p.hostPath(compute.Spec, path.Join(virtPrivateDir, string(p.cfg.VMI.UID)))
}
