// Package hooksidecar implements runpolicy's KubeVirt hook sidecar: the OnDefineDomain hook that makes a guest
// reboot end QEMU and adds a second QMP monitor, the gRPC server virt-launcher calls, and the monitor that records
// QEMU's SHUTDOWN events in the container's termination log.
package hooksidecar

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// QMPChardevID is the id of the chardev (and monitor) the hook adds to QEMU's command line.
const QMPChardevID = "runpolicy-qmp"

// QMPArgs returns the QEMU arguments that open a QMP monitor listening on the unix socket socketPath.
// wait=off: QEMU does not wait for the sidecar to connect, so a slow or missing sidecar never blocks a VM.
func QMPArgs(socketPath string) []string {
	// QEMU's option syntax escapes a comma inside a value by doubling it.
	path := strings.ReplaceAll(socketPath, ",", ",,")
	return []string{
		"-chardev", "socket,id=" + QMPChardevID + ",path=" + path + ",server=on,wait=off",
		"-mon", "chardev=" + QMPChardevID + ",mode=control",
	}
}

// MutateDomain applies runpolicy's changes to a libvirt domain XML:
//   - <on_reboot>destroy</on_reboot>: a reboot inside the guest ends QEMU (libvirt turns it into
//     set-action reboot=shutdown), so KubeVirt sees the VMI finish and runpolicy can start a new one;
//   - a <qemu:commandline> adding a QMP monitor on qmpSocket, which the sidecar's monitor reads SHUTDOWN events from.
//     qmpSocket is the path as QEMU in the compute container sees it (Config.QMPSockets), not the sidecar's own.
//
// Everything else is kept. Applying it again to its own output changes nothing (the monitor is added once).
func MutateDomain(domainXML []byte, qmpSocket string) ([]byte, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(domainXML)); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	if dom.Name == "" && dom.Type == "" {
		return nil, fmt.Errorf("parse domain XML: not a libvirt <domain> (no type or name)")
	}
	dom.OnReboot = "destroy"

	cmd := dom.QEMUCommandline
	if cmd == nil {
		cmd = &libvirtxml.DomainQEMUCommandline{}
		dom.QEMUCommandline = cmd
	}
	cmd.Args = append(removeOurArgs(cmd.Args), toArgs(QMPArgs(qmpSocket))...)

	out, err := dom.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode domain XML: %w", err)
	}
	return []byte(out), nil
}

// removeOurArgs drops the -chardev/-mon pairs an earlier MutateDomain added, keeping every other argument.
func removeOurArgs(args []libvirtxml.DomainQEMUCommandlineArg) []libvirtxml.DomainQEMUCommandlineArg {
	kept := make([]libvirtxml.DomainQEMUCommandlineArg, 0, len(args))
	for i := 0; i < len(args); i++ {
		if i+1 < len(args) && isOurs(args[i].Value, args[i+1].Value) {
			i++
			continue
		}
		kept = append(kept, args[i])
	}
	return kept
}

func isOurs(flag, value string) bool {
	switch flag {
	case "-chardev":
		return strings.HasPrefix(value, "socket,id="+QMPChardevID+",")
	case "-mon":
		return strings.HasPrefix(value, "chardev="+QMPChardevID+",")
	}
	return false
}

func toArgs(values []string) []libvirtxml.DomainQEMUCommandlineArg {
	args := make([]libvirtxml.DomainQEMUCommandlineArg, len(values))
	for i, v := range values {
		args[i] = libvirtxml.DomainQEMUCommandlineArg{Value: v}
	}
	return args
}

// QEMUCommandlineArgs returns the extra QEMU arguments a domain XML carries in <qemu:commandline>, in order.
func QEMUCommandlineArgs(domainXML []byte) ([]string, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(domainXML)); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	if dom.QEMUCommandline == nil {
		return nil, nil
	}
	values := make([]string, len(dom.QEMUCommandline.Args))
	for i, a := range dom.QEMUCommandline.Args {
		values[i] = a.Value
	}
	return values, nil
}
