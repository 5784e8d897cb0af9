package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kvv1 "kubevirt.io/api/core/v1"
)

// Image is a container image as the runner provides it.
type Image struct {
	// Root is a directory tree laid over the host's root, read-only: each of its top-level directories (which must
	// exist on the host: usr, etc, ...) becomes an overlay of Root/<dir> over /<dir> in the container's view.
	Root string
	// Entrypoint is the image's ENTRYPOINT, run when the container has no command.
	Entrypoint []string
}

// Config is what one launcher pod needs on this node.
type Config struct {
	// Pod is the launcher pod as virt-controller rendered it (its UID names nothing on the host; it may be empty).
	Pod *corev1.Pod
	// VMI is the pod's VMI; its kernel boot container's files are put where virt-handler mounts them.
	VMI *kvv1.VirtualMachineInstance
	// Images are the images of the pod, by reference: the containers to run (see Run) and the kernel boot image.
	Images map[string]Image
	// Run tells which containers are run; nil runs compute and the hook sidecars (hook-sidecar-N). The others
	// (guest-console-log, ...) are not run and have no status here.
	Run func(corev1.Container) bool
	// Launcherctl is bin/kubevirt/$KUBEVIRT_VERSION/launcherctl.
	Launcherctl string
	// Dir is the pod's directory on the node: volumes, container logs, termination messages. It must exist, and be
	// short (like the kubelet's /var/lib/kubelet/pods/<uid>): the unix sockets below it must fit 108 bytes.
	Dir string
}

// maxSocketPath is the size of sockaddr_un's sun_path: a unix socket path is shorter.
const maxSocketPath = 108

// Pod is a running launcher pod.
type Pod struct {
	cfg        Config
	volumes    map[string]string // volume name -> host directory
	containers []*Container
	handler    *Handler
}

// Container is one running (or exited) container of the pod.
type Container struct {
	Spec      corev1.Container
	LogPath   string
	termPath  string
	cmd       *exec.Cmd
	startedAt time.Time
	done      chan struct{}
	// set when done is closed
	terminated corev1.ContainerStateTerminated
}

func defaultRun(c corev1.Container) bool {
	return c.Name == "compute" || strings.HasPrefix(c.Name, "hook-sidecar-")
}

// Start creates the pod's volumes, puts the kernel boot files in place, starts the containers and the
// virt-handler side (Handler). Stop or Kill it when done.
func Start(cfg Config) (*Pod, error) {
	if cfg.Run == nil {
		cfg.Run = defaultRun
	}
	p := &Pod{cfg: cfg, volumes: map[string]string{}}
	if err := p.makeVolumes(); err != nil {
		return nil, err
	}
	if err := p.placeKernelBoot(); err != nil {
		return nil, err
	}
	for _, c := range cfg.Pod.Spec.Containers {
		if !cfg.Run(c) {
			continue
		}
		ctr, err := p.startContainer(c)
		if err != nil {
			p.Kill()
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		p.containers = append(p.containers, ctr)
	}
	compute := p.container("compute")
	if compute == nil {
		p.Kill()
		return nil, errors.New("the pod has no compute container")
	}
	socket, err := p.hostPath(compute.Spec, "/var/run/kubevirt/sockets/launcher-sock")
	if err != nil {
		p.Kill()
		return nil, err
	}
	if len(socket) >= maxSocketPath {
		p.Kill()
		return nil, fmt.Errorf("the launcher's cmd socket %s is longer than a unix socket path can be (%d bytes): use a shorter pod directory",
			socket, maxSocketPath-1)
	}
	handlerDir := filepath.Join(cfg.Dir, "virt-handler")
	if err := os.MkdirAll(handlerDir, 0o755); err != nil {
		p.Kill()
		return nil, err
	}
	p.handler, err = startHandler(cfg.Launcherctl, socket, handlerDir, nonRoot(cfg.Pod),
		filepath.Join(cfg.Dir, "virt-handler.log"))
	if err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// nonRoot tells whether the launcher runs in KubeVirt's non-root mode (the compute container's user is not 0).
func nonRoot(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == "compute" {
			uid, _, _ := user(pod, c)
			return uid != 0
		}
	}
	return false
}

// Handler is the pod's virt-handler side.
func (p *Pod) Handler() *Handler { return p.handler }

// Follow is Handler().Follow, given up with the compute container's status when compute exits before the VMI's
// phase is final (virt-launcher failed).
func (p *Pod) Follow(ctx context.Context, vmi *kvv1.VirtualMachineInstance,
	onPhase func(kvv1.VirtualMachineInstancePhase, *Domain)) (kvv1.VirtualMachineInstancePhase, *Domain, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	compute := p.container("compute")
	var final atomic.Bool
	go func() {
		select {
		case <-compute.Done():
			if !final.Load() {
				cancel(fmt.Errorf("the compute container exited: %+v", compute.Status().State.Terminated))
			}
		case <-ctx.Done():
		}
	}()
	phase, d, err := p.handler.Follow(ctx, vmi, func(ph kvv1.VirtualMachineInstancePhase, d *Domain) {
		if ph == kvv1.Succeeded || ph == kvv1.Failed {
			final.Store(true)
		}
		if onPhase != nil {
			onPhase(ph, d)
		}
	})
	if err != nil && context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled) {
		err = fmt.Errorf("%w: %w", err, context.Cause(ctx))
	}
	return phase, d, err
}

// Containers are the containers run, in the pod's order.
func (p *Pod) Containers() []*Container { return p.containers }

func (p *Pod) container(name string) *Container {
	for _, c := range p.containers {
		if c.Spec.Name == name {
			return c
		}
	}
	return nil
}

// Done is closed when the container has exited.
func (c *Container) Done() <-chan struct{} { return c.done }

// Status is the container's status as the kubelet reports it: running, or terminated with the kubelet's
// termination message.
func (c *Container) Status() corev1.ContainerStatus {
	st := corev1.ContainerStatus{Name: c.Spec.Name, Image: c.Spec.Image}
	select {
	case <-c.done:
		t := c.terminated
		st.State.Terminated = &t
	default:
		st.Started = ptrTrue()
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
	}
	return st
}

func ptrTrue() *bool { b := true; return &b }

// ContainerStatuses are the statuses of the containers run, in the pod's order.
func (p *Pod) ContainerStatuses() []corev1.ContainerStatus {
	out := make([]corev1.ContainerStatus, 0, len(p.containers))
	for _, c := range p.containers {
		out = append(out, c.Status())
	}
	return out
}

// Exited is closed when every container run has exited.
func (p *Pod) Exited() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for _, c := range p.containers {
			<-c.done
		}
		close(ch)
	}()
	return ch
}

// Stop is the kubelet's pod deletion: SIGTERM to every container's PID 1, SIGKILL after grace.
func (p *Pod) Stop(grace time.Duration) {
	for _, c := range p.containers {
		c.signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.Exited():
	case <-timer.C:
	}
	p.Kill()
}

// Kill SIGKILLs every container's PID 1 (the kernel then kills the rest of its PID namespace), stops the handler
// and waits for all of them.
func (p *Pod) Kill() {
	for _, c := range p.containers {
		c.signal(syscall.SIGKILL)
	}
	for _, c := range p.containers {
		<-c.done
	}
	if p.handler != nil {
		p.handler.Close()
	}
}

func (c *Container) signal(sig syscall.Signal) {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(sig)
	}
}
