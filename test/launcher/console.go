package launcher

import (
	"errors"
	"os"
	"path"
)

// virtPrivateDir is KubeVirt's util.VirtPrivateDir: the compute container's mount of the pod's private volume, with
// one directory per VMI UID holding the serial console's socket and its log.
const virtPrivateDir = "/var/run/kubevirt-private"

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
