package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	v1 "kubevirt.io/api/core/v1"
	"kubevirt.io/client-go/log"

	diskutils "kubevirt.io/kubevirt/pkg/ephemeral-disk-utils"
	cmdv1 "kubevirt.io/kubevirt/pkg/handler-launcher-com/cmd/v1"
	"kubevirt.io/kubevirt/pkg/safepath"
	cmdclient "kubevirt.io/kubevirt/pkg/virt-handler/cmd-client"
	"kubevirt.io/kubevirt/pkg/virt-handler/isolation"
	eventsserver "kubevirt.io/kubevirt/pkg/virt-handler/notify-server"
	"kubevirt.io/kubevirt/pkg/virt-handler/notify-server/pipe"
	"kubevirt.io/kubevirt/pkg/virt-launcher/virtwrap/api"
)

type command struct {
	Op  string                     `json:"op"`
	VMI *v1.VirtualMachineInstance `json:"vmi,omitempty"`
}

// message is one line of handler's output.
type message struct {
	Kind    string      `json:"kind"`
	Op      string      `json:"op,omitempty"`
	Error   string      `json:"error,omitempty"`
	Type    string      `json:"type,omitempty"`
	Domain  *domainInfo `json:"domain,omitempty"`
	PID     int         `json:"pid,omitempty"`
	Reason  string      `json:"reason,omitempty"`
	Message string      `json:"message,omitempty"`
}

// domainInfo is what virt-handler reads from a domain event: the libvirt state and reason as virt-launcher
// reports them (api.LifeCycle, api.StateChangeReason), and whether it is the final delete notification.
type domainInfo struct {
	Name    string `json:"name"`
	UID     string `json:"uid,omitempty"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Deleted bool   `json:"deleted,omitempty"`
	// ACPI tells whether the domain has ACPI, which virt-handler's phase mapping reads for a Destroyed domain.
	ACPI bool `json:"acpi,omitempty"`
}

func summarize(d *api.Domain) *domainInfo {
	if d == nil {
		return nil
	}
	return &domainInfo{Name: d.Name, UID: string(d.Spec.Metadata.KubeVirt.UID), Status: string(d.Status.Status),
		Reason: string(d.Status.Reason), Deleted: d.ObjectMeta.DeletionTimestamp != nil,
		ACPI: d.Spec.Features != nil && d.Spec.Features.ACPI != nil}
}

type output struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *output) send(m message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(m)
}

// recorder passes the Kubernetes events virt-launcher sends (HandleK8SEvent) to the output.
type recorder struct{ out *output }

func (r recorder) Event(_ runtime.Object, eventtype, reason, msg string) {
	r.out.send(message{Kind: "event", Type: eventtype, Reason: reason, Message: msg})
}

func (r recorder) Eventf(o runtime.Object, eventtype, reason, format string, args ...interface{}) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r recorder) AnnotatedEventf(o runtime.Object, _ map[string]string, eventtype, reason, format string, args ...interface{}) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

// qemuOwnership is virt-handler's DefaultOwnershipManager, which chowns to the user "qemu" of virt-handler's
// image; the host running the tests has no such user, so the ids (107, KubeVirt's util.NonRootUID) are given.
type qemuOwnership struct{}

func (qemuOwnership) SetFileOwnership(file *safepath.Path) error {
	fd, err := safepath.OpenAtNoFollow(file)
	if err != nil {
		return err
	}
	defer fd.Close()
	return qemuOwnership{}.UnsafeSetFileOwnership(fd.SafePath())
}

func (qemuOwnership) UnsafeSetFileOwnership(file string) error { return os.Chown(file, 107, 107) }

func handler(args []string) error {
	fs := flag.NewFlagSet("handler", flag.ContinueOnError)
	socket := fs.String("socket", "", "the launcher's cmd socket as the node sees it (<sockets emptyDir>/launcher-sock)")
	handlerDir := fs.String("handler-dir", "", "virt-handler's share dir: domain-notify.sock is served here")
	launcherShareDir := fs.String("launcher-share-dir", virtShareDir, "virt-launcher's --kubevirt-share-dir, in its view")
	nonRoot := fs.Bool("non-root", true, "the VMI runs non-root: the notify pipe is chowned to 107")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for the cmd socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" || *handlerDir == "" {
		return errors.New("--socket and --handler-dir are required")
	}
	log.InitializeLogging("virt-handler")
	out := &output{enc: json.NewEncoder(os.Stdout)}

	// The notify server, as virt-handler runs it for all launchers on the node.
	events := make(chan watch.Event, 100)
	vmiStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		if err := eventsserver.RunServer(*handlerDir, stop, events, recorder{out}, vmiStore); err != nil {
			out.send(message{Kind: "error", Error: "notify server: " + err.Error()})
		}
	}()
	go func() {
		for e := range events {
			m := message{Kind: "domain", Type: string(e.Type)}
			switch o := e.Object.(type) {
			case *api.Domain:
				m.Domain = summarize(o)
			default:
				m.Message = fmt.Sprintf("%v", o)
			}
			out.send(m)
		}
	}()

	// Commands are read from the start, so that closing stdin stops the wait for the socket too.
	cmds := make(chan command)
	go func() {
		defer close(cmds)
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var c command
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				out.send(message{Kind: "reply", Error: "bad command: " + err.Error()})
				continue
			}
			cmds <- c
		}
	}()

	client, pid, err := waitForLauncher(*socket, *timeout, cmds)
	if err != nil {
		return err
	}
	defer client.Close()

	// The notify pipe, injected into the launcher's view of its share dir (virt-handler's startDomainNotifyPipe).
	diskutils.DefaultOwnershipManager = qemuOwnership{}
	res, err := isolation.NewSocketBasedIsolationDetector().DetectForSocket(*socket)
	if err != nil {
		return err
	}
	ln, err := pipe.InjectNotify(res, *launcherShareDir, *nonRoot)
	if err != nil {
		return fmt.Errorf("injecting the notify pipe: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := log.Log.With("component", "notify-pipe")
	go pipe.Pipe(ctx, pipe.ChanFromListener(ctx, logger, ln), func(conn net.Conn) {
		pipe.Proxy(logger, conn, pipe.NewConnectToNotifyFunc(*handlerDir))
	})
	out.send(message{Kind: "ready", PID: pid})

	var vmi *v1.VirtualMachineInstance
	for c := range cmds {
		r := message{Kind: "reply", Op: c.Op}
		if c.VMI != nil {
			vmi = c.VMI
			_ = vmiStore.Add(vmi)
		}
		if vmi == nil && c.Op != "domain" {
			r.Error = "no VMI yet: send sync with a vmi first"
			out.send(r)
			continue
		}
		switch c.Op {
		case "sync":
			err = client.SyncVirtualMachine(vmi, virtualMachineOptions())
		case "shutdown":
			err = client.ShutdownVirtualMachine(vmi)
		case "kill":
			err = client.KillVirtualMachine(vmi)
		case "delete":
			err = client.DeleteDomain(vmi)
		case "domain":
			var d *api.Domain
			var exists bool
			d, exists, err = client.GetDomain()
			if exists {
				r.Domain = summarize(d)
			}
		default:
			err = fmt.Errorf("unknown op %q", c.Op)
		}
		if err != nil {
			r.Error = err.Error()
		}
		out.send(r)
	}
	return nil
}

// waitForLauncher waits until the cmd socket answers a Ping, as virt-handler does before it syncs a VMI, and
// returns the client and the pid of virt-launcher (the socket's peer) as the node sees it.
func waitForLauncher(socket string, timeout time.Duration, cmds <-chan command) (cmdclient.LauncherClient, int, error) {
	deadline := time.After(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(socket); err == nil {
			if client, err := cmdclient.NewClient(socket); err == nil {
				if err := client.Ping(); err == nil {
					pid, err := socketPeerPID(socket)
					if err != nil {
						client.Close()
						return nil, 0, err
					}
					return client, pid, nil
				}
				client.Close()
			}
		}
		select {
		case <-deadline:
			return nil, 0, fmt.Errorf("virt-launcher's cmd socket %s did not answer within %s", socket, timeout)
		case _, open := <-cmds:
			if !open {
				return nil, 0, errors.New("stdin closed before virt-launcher's cmd socket answered")
			}
		case <-tick.C:
		}
	}
}

func socketPeerPID(socket string) (int, error) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

// virtualMachineOptions is what virt-handler sends with SyncVirtualMachine for a VMI without SMBIOS settings,
// preallocated volumes or NUMA topology (pkg/virt-handler/options.go virtualMachineOptions, which is not
// exported), with the KubeVirt CR's defaults.
func virtualMachineOptions() *cmdv1.VirtualMachineOptions {
	return &cmdv1.VirtualMachineOptions{
		MemBalloonStatsPeriod: 10,
		Topology:              &cmdv1.Topology{},
		DisksInfo:             map[string]*cmdv1.DiskInfo{},
		ClusterConfig:         &cmdv1.ClusterConfig{BochsDisplayForEFIGuests: true},
	}
}
