package launcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
)

// RunnerOptions configure a Runner.
type RunnerOptions struct {
	// Binaries are KubeVirt's launcher binaries (Build).
	Binaries Binaries
	// HookSidecarImage is the image runpolicy's operator puts in the hook-sidecar annotation, and HookSidecar the
	// hook-sidecar binary that image runs (go build ./cmd/hook-sidecar).
	HookSidecarImage, HookSidecar string
	// GuestDir is the tiny guest (test/guest/setup.sh's bin/guest): every kernel boot image is served from it.
	GuestDir string
	// Dir holds the runner's files (the hook sidecar's image tree). It must exist. The pods' directories are made
	// in os.TempDir(), short enough for the unix sockets below them.
	Dir string
}

// Runner runs the real virt-launcher for the launcher pods of a node: the kubelet's part (containers, termination
// messages) and virt-handler's (Follow). One Runner serves any number of pods.
type Runner struct {
	opts    RunnerOptions
	sidecar Image

	mu   sync.Mutex
	pods map[types.UID]*runnerPod
	wg   sync.WaitGroup
}

type runnerPod struct {
	pod    *Pod
	cancel context.CancelFunc
	dir    string
	cb     Callbacks
	ctx    context.Context

	mu        sync.Mutex
	following bool
	deleting  bool
	followed  chan struct{} // closed when Follow returned
}

// Callbacks receive what a node layer writes to the API server for one pod.
type Callbacks struct {
	// Phase is called with each VMI phase change virt-handler would write (Running, then Succeeded or Failed),
	// with the domain that caused it.
	Phase func(kvv1.VirtualMachineInstancePhase, *Domain)
	// Exited is called once every container run has exited, with their statuses as the kubelet reports them.
	Exited func([]corev1.ContainerStatus)
	// Error is called when following the VMI failed (virt-launcher failed; not when the pod ended first).
	Error func(error)
}

// NewRunner prepares the hook sidecar's image tree.
func NewRunner(opts RunnerOptions) (*Runner, error) {
	root := filepath.Join(opts.Dir, "images", "hook-sidecar")
	bin := filepath.Join(root, "usr", "local", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, err
	}
	if err := copyFile(opts.HookSidecar, filepath.Join(bin, "hook-sidecar")); err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Join(bin, "hook-sidecar"), 0o755); err != nil {
		return nil, err
	}
	return &Runner{opts: opts, pods: map[types.UID]*runnerPod{},
		sidecar: Image{Root: root, Entrypoint: []string{"/usr/local/bin/hook-sidecar"}}}, nil
}

// images maps the pod's images: compute's (virt-controller's --launcher-image) to KubeVirt's launcher image, the
// hook sidecar's to runpolicy's, the VMI's kernel boot image to the tiny guest.
func (r *Runner) images(pod *corev1.Pod, vmi *kvv1.VirtualMachineInstance) map[string]Image {
	m := map[string]Image{r.opts.HookSidecarImage: r.sidecar}
	for _, c := range pod.Spec.Containers {
		if c.Name == "compute" {
			m[c.Image] = r.opts.Binaries.LauncherImage
		}
	}
	if fw := vmi.Spec.Domain.Firmware; fw != nil && fw.KernelBoot != nil && fw.KernelBoot.Container != nil {
		m[fw.KernelBoot.Container.Image] = Image{Root: r.opts.GuestDir}
	}
	return m
}

// Run is the kubelet's part for a pod bound to the node: it starts the pod's containers (the kernel boot files of
// vmi put in place as virt-handler mounts them). The VMI is started by Sync. The pod's UID names it.
func (r *Runner) Run(ctx context.Context, pod *corev1.Pod, vmi *kvv1.VirtualMachineInstance, cb Callbacks) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.pods[pod.UID]; ok {
		return fmt.Errorf("pod %s/%s (%s) already runs", pod.Namespace, pod.Name, pod.UID)
	}
	// Short, like the kubelet's /var/lib/kubelet/pods/<uid>: the sockets below it must fit a unix socket path.
	dir, err := os.MkdirTemp("", "pod-")
	if err != nil {
		return err
	}
	p, err := Start(Config{Pod: pod, VMI: vmi, Images: r.images(pod, vmi), Launcherctl: r.opts.Binaries.Launcherctl, Dir: dir})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	rp := &runnerPod{pod: p, cancel: cancel, dir: dir, cb: cb, ctx: ctx, followed: make(chan struct{})}
	r.pods[pod.UID] = rp
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		select {
		case <-p.Exited():
		case <-ctx.Done():
			p.Kill()
		}
		cancel() // ends Follow if it still waits
		rp.mu.Lock()
		following := rp.following
		rp.mu.Unlock()
		if following {
			<-rp.followed
		}
		p.Handler().Close()
		if cb.Exited != nil {
			cb.Exited(p.ContainerStatuses())
		}
	}()
	return nil
}

// Sync is virt-handler's part once the VMI is Scheduled on the node and its pod runs: Follow (SyncVirtualMachine,
// the phase from each domain event to Callbacks.Phase, DeleteDomain once final), in the background. Only the first
// call for a pod does anything.
func (r *Runner) Sync(uid types.UID, vmi *kvv1.VirtualMachineInstance) error {
	r.mu.Lock()
	rp, ok := r.pods[uid]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("no pod %s runs", uid)
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.following {
		return nil
	}
	rp.following = true
	go func() {
		defer close(rp.followed)
		_, _, err := rp.pod.Follow(rp.ctx, vmi, rp.cb.Phase)
		if err != nil && rp.cb.Error != nil && rp.ctx.Err() == nil {
			rp.cb.Error(err)
		}
	}()
	return nil
}

// Pod is the running pod of that UID, nil when there is none.
func (r *Runner) Pod(uid types.UID) *Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rp, ok := r.pods[uid]; ok {
		return rp.pod
	}
	return nil
}

// Delete is the kubelet's pod deletion: SIGTERM to the containers, SIGKILL after grace. It returns once they
// have exited (Exited was called).
func (r *Runner) Delete(uid types.UID, grace time.Duration) {
	r.mu.Lock()
	rp, ok := r.pods[uid]
	r.mu.Unlock()
	if !ok {
		return
	}
	rp.mu.Lock()
	first := !rp.deleting
	rp.deleting = true
	rp.mu.Unlock()
	if first {
		rp.pod.Stop(grace)
	}
	<-rp.pod.Exited()
}

// Close kills every pod, waits for their callbacks and removes the pods' directories.
func (r *Runner) Close() {
	r.mu.Lock()
	for _, rp := range r.pods {
		rp.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	for uid, rp := range r.pods {
		_ = os.RemoveAll(rp.dir)
		delete(r.pods, uid)
	}
}
