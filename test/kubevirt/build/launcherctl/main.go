// Command launcherctl is the launcher runner's (test/launcher) bridge to KubeVirt's own code. It is not part of
// runpolicy's module (which never imports kubevirt.io/kubevirt): test/kubevirt/build.sh compiles it inside the
// throwaway KubeVirt build module into bin/kubevirt/$KUBEVIRT_VERSION/launcherctl. The runner drives it as a
// subprocess, with JSON in and out.
//
//	launcherctl render [--feature-gates Sidecar] [--use-emulation]   VMI JSON on stdin -> {"vmi":…,"pod":…} on stdout
//	launcherctl handler --socket S --handler-dir D [--non-root]   virt-handler's part for one launcher pod
//	launcherctl container SPEC.json   container init: mounts, then execs the entrypoint as the container's user
//
// render applies virt-api's VMI mutations on create (pkg/virt-api/webhooks/mutating-webhook/mutators: KubeVirt's
// defaults, non-root mode) and renders the launcher pod with virt-controller's own TemplateService
// (pkg/virt-controller/services), for tests without a control plane. With one, the VMI and the pod come from the
// real virt-controller instead.
//
// handler is virt-handler's side of the launcher protocol, with virt-handler's own packages: the notify server
// (pkg/virt-handler/notify-server) on --handler-dir/domain-notify.sock, the domain-notify-pipe.sock injected into
// the launcher's view of its share dir through /proc/<pid>/root (pkg/virt-handler/notify-server/pipe and
// isolation, as virt-handler's launcher-clients manager does), and the command client
// (pkg/virt-handler/cmd-client) on the launcher's cmd socket. It reads one JSON command per line on stdin:
//
//	{"op":"sync","vmi":{…}}   SyncVirtualMachine (the VMI is kept for the commands below)
//	{"op":"shutdown"} {"op":"kill"} {"op":"delete"} {"op":"domain"}   ShutdownVirtualMachine, KillVirtualMachine,
//	                          DeleteDomain, GetDomain
//
// and writes one JSON message per line on stdout: {"kind":"ready","pid":N} once the cmd socket answers,
// {"kind":"reply","op":…,"error":…,"domain":…} per command, {"kind":"domain","type":…,"domain":…} per domain event
// virt-launcher sent, {"kind":"event",…} per Kubernetes event it sent. stdin closed: it stops.
//
// container is the init of one container view: started by the runner in new mount, PID and UTS namespaces, it
// makes the mounts of SPEC (in order), sets the hostname, and execs the entrypoint — through util-linux's setpriv
// when the container runs as a non-root user, with the user's capabilities — so that the entrypoint is PID 1 of
// its namespace, as in a container.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: launcherctl render|handler|container ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "render":
		err = render(os.Args[2:])
	case "handler":
		err = handler(os.Args[2:])
	case "container":
		err = container(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "launcherctl %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
