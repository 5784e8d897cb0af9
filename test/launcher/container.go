package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// containerSpec and mountSpec are launcherctl container's input (test/kubevirt/build/launcherctl).
type containerSpec struct {
	Hostname string      `json:"hostname,omitempty"`
	Mounts   []mountSpec `json:"mounts"`
	Dir      string      `json:"dir,omitempty"`
	Env      []string    `json:"env"`
	Args     []string    `json:"args"`
	User     *userSpec   `json:"user,omitempty"`
}

type userSpec struct {
	UID        int      `json:"uid"`
	GID        int      `json:"gid"`
	Groups     []int    `json:"groups,omitempty"`
	Caps       []string `json:"caps,omitempty"`
	NoNewPrivs bool     `json:"noNewPrivs,omitempty"`
}

type mountSpec struct {
	Kind     string   `json:"kind"`
	Source   string   `json:"source,omitempty"`
	Target   string   `json:"target"`
	ReadOnly bool     `json:"readOnly,omitempty"`
	Lower    []string `json:"lower,omitempty"`
	Data     string   `json:"data,omitempty"`
	Scratch  bool     `json:"scratch,omitempty"`
}

// imagePath is the PATH of the images (the container runtime's default when the image sets none).
const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func (p *Pod) startContainer(c corev1.Container) (*Container, error) {
	img, ok := p.cfg.Images[c.Image]
	if !ok {
		return nil, fmt.Errorf("image %s is not among the runner's images", c.Image)
	}
	dir := filepath.Join(p.cfg.Dir, "containers", c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ctr := &Container{Spec: c, LogPath: filepath.Join(dir, "log"), termPath: filepath.Join(dir, "termination-log"),
		done: make(chan struct{})}
	// The kubelet creates the termination message file, writable by any user.
	if err := os.WriteFile(ctr.termPath, nil, 0o666); err != nil {
		return nil, err
	}
	if err := os.Chmod(ctr.termPath, 0o666); err != nil {
		return nil, err
	}
	spec, err := p.containerView(c, img, ctr.termPath)
	if err != nil {
		return nil, err
	}
	specPath := filepath.Join(dir, "spec.json")
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specPath, b, 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(ctr.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	ctr.cmd = exec.Command(p.cfg.Launcherctl, "container", specPath)
	ctr.cmd.Stdout, ctr.cmd.Stderr = logf, logf
	ctr.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := ctr.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	ctr.startedAt = time.Now()
	go func() {
		err := ctr.cmd.Wait()
		_ = logf.Close()
		code := int32(0)
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			ws := exit.Sys().(syscall.WaitStatus)
			switch {
			case ws.Signaled():
				code = 128 + int32(ws.Signal()) // as container runtimes report a signalled PID 1
			default:
				code = int32(ws.ExitStatus())
			}
		} else if err != nil {
			code = 128
		}
		t := terminatedState(code, ctr.termPath, ctr.LogPath, c.TerminationMessagePolicy)
		t.StartedAt = metav1.NewTime(ctr.startedAt)
		t.FinishedAt = metav1.Now()
		ctr.terminated = t
		close(ctr.done)
	}()
	return ctr, nil
}

// containerView is the launcherctl container spec of c: see the package documentation.
func (p *Pod) containerView(c corev1.Container, img Image, termPath string) (*containerSpec, error) {
	spec := &containerSpec{Hostname: p.hostname(), Dir: c.WorkingDir}
	// The image's files.
	tops, err := os.ReadDir(img.Root)
	if err != nil {
		return nil, fmt.Errorf("image root: %w", err)
	}
	for _, e := range tops {
		if !e.IsDir() {
			continue
		}
		host := "/" + e.Name()
		if st, err := os.Stat(host); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("image %s: top-level directory %s does not exist on the host", c.Image, host)
		}
		spec.Mounts = append(spec.Mounts, mountSpec{Kind: "overlay", Target: host,
			Lower: []string{filepath.Join(img.Root, e.Name()), host}})
	}
	// The container's own writable places.
	// (/tmp and /var/tmp come last: the pod's directory may be below them.)
	spec.Mounts = append(spec.Mounts, mountSpec{Kind: "tmpfs", Target: "/run"})
	for _, d := range []string{"/var/log", "/var/lib/libvirt", "/var/cache/libvirt"} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			spec.Mounts = append(spec.Mounts, mountSpec{Kind: "tmpfs", Target: d, Data: "mode=1777"})
		}
	}
	// /dev, without /dev/kvm.
	spec.Mounts = append(spec.Mounts, mountSpec{Kind: "tmpfs", Target: "/dev", Data: "mode=755"})
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		var st syscall.Stat_t
		if err := syscall.Stat("/dev/"+d, &st); err != nil {
			return nil, err
		}
		spec.Mounts = append(spec.Mounts, mountSpec{Kind: "char", Target: "/dev/" + d,
			Data: fmt.Sprintf("%d:%d", major(st.Rdev), minor(st.Rdev))})
	}
	spec.Mounts = append(spec.Mounts,
		mountSpec{Kind: "devpts", Target: "/dev/pts"},
		mountSpec{Kind: "symlink", Source: "pts/ptmx", Target: "/dev/ptmx"},
		mountSpec{Kind: "tmpfs", Target: "/dev/shm", Data: "mode=1777"},
		mountSpec{Kind: "mqueue", Target: "/dev/mqueue"},
		mountSpec{Kind: "symlink", Source: "/proc/self/fd", Target: "/dev/fd"},
		mountSpec{Kind: "symlink", Source: "/proc/self/fd/0", Target: "/dev/stdin"},
		mountSpec{Kind: "symlink", Source: "/proc/self/fd/1", Target: "/dev/stdout"},
		mountSpec{Kind: "symlink", Source: "/proc/self/fd/2", Target: "/dev/stderr"},
	)
	termTarget := c.TerminationMessagePath
	if termTarget == "" {
		termTarget = corev1.TerminationMessagePathDefault
	}
	spec.Mounts = append(spec.Mounts,
		mountSpec{Kind: "proc", Target: "/proc"},
		mountSpec{Kind: "bind", Source: "/sys", Target: "/sys", ReadOnly: true},
	)
	// The pod's volumes, shallowest first (as the container runtime orders them).
	mounts := append([]corev1.VolumeMount(nil), c.VolumeMounts...)
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(filepath.Clean(mounts[i].MountPath), "/") < strings.Count(filepath.Clean(mounts[j].MountPath), "/")
	})
	for _, m := range mounts {
		src, err := p.volumeSource(m)
		if err != nil {
			return nil, err
		}
		spec.Mounts = append(spec.Mounts, mountSpec{Kind: "bind", Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly, Scratch: true})
	}
	spec.Mounts = append(spec.Mounts, mountSpec{Kind: "bind", Source: termPath, Target: termTarget})
	for _, d := range []string{"/tmp", "/var/tmp"} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			spec.Mounts = append(spec.Mounts, mountSpec{Kind: "tmpfs", Target: d, Data: "mode=1777"})
		}
	}

	env, err := p.env(c, img)
	if err != nil {
		return nil, err
	}
	spec.Env = env
	vars := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		vars[k] = v
	}
	args := img.Entrypoint
	if len(c.Command) > 0 {
		args = expand(c.Command, vars)
	}
	spec.Args = append(append([]string(nil), args...), expand(c.Args, vars)...)
	if len(spec.Args) == 0 {
		return nil, errors.New("no command and no image entrypoint")
	}
	if !filepath.IsAbs(spec.Args[0]) {
		return nil, fmt.Errorf("entrypoint %q is not an absolute path", spec.Args[0])
	}

	uid, gid, groups := user(p.cfg.Pod, c)
	if uid != 0 {
		u := &userSpec{UID: int(uid), GID: int(gid), Groups: groups}
		if sc := c.SecurityContext; sc != nil {
			if sc.Capabilities != nil {
				for _, a := range sc.Capabilities.Add {
					u.Caps = append(u.Caps, strings.ToLower(strings.TrimPrefix(string(a), "CAP_")))
				}
			}
			u.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		}
		spec.User = u
	}
	return spec, nil
}

func (p *Pod) hostname() string {
	if p.cfg.Pod.Spec.Hostname != "" {
		return p.cfg.Pod.Spec.Hostname
	}
	if p.cfg.Pod.Name != "" {
		return p.cfg.Pod.Name
	}
	return "virt-launcher"
}

// user is the container's uid, gid and supplementary groups (fsGroup and supplementalGroups), from the container's
// and the pod's security contexts.
func user(pod *corev1.Pod, c corev1.Container) (uid, gid int64, groups []int) {
	psc := pod.Spec.SecurityContext
	if psc != nil {
		if psc.RunAsUser != nil {
			uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			gid = *psc.RunAsGroup
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	if psc != nil {
		if psc.FSGroup != nil {
			groups = append(groups, int(*psc.FSGroup))
		}
		for _, g := range psc.SupplementalGroups {
			groups = append(groups, int(g))
		}
	}
	return uid, gid, groups
}

// env is the container's environment as the kubelet and the runtime set it: PATH, HOSTNAME and HOME (the user's
// home in the image's /etc/passwd, else /), then the container's variables (values, and the downward API fields
// KubeVirt uses).
func (p *Pod) env(c corev1.Container, img Image) ([]string, error) {
	uid, _, _ := user(p.cfg.Pod, c)
	out := []string{"PATH=" + imagePath, "HOSTNAME=" + p.hostname(), "HOME=" + home(img, uid)}
	vars := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.Value != "" {
			v = expand([]string{e.Value}, vars)[0]
		}
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil:
				var err error
				if v, err = p.fieldRef(f.FieldRef.FieldPath); err != nil {
					return nil, fmt.Errorf("env %s: %w", e.Name, err)
				}
			case f.ResourceFieldRef != nil:
				v = resourceField(c, f.ResourceFieldRef)
			default:
				return nil, fmt.Errorf("env %s: only fieldRef and resourceFieldRef are supported", e.Name)
			}
		}
		vars[e.Name] = v
		out = append(out, e.Name+"="+v)
	}
	if len(c.EnvFrom) > 0 {
		return nil, errors.New("envFrom is not supported by the launcher runner")
	}
	return out, nil
}

func (p *Pod) fieldRef(path string) (string, error) {
	pod := p.cfg.Pod
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.hostIP":
		return "127.0.0.1", nil
	}
	for _, prefix := range []string{"metadata.labels['", "metadata.annotations['"} {
		if key, ok := strings.CutPrefix(path, prefix); ok {
			key = strings.TrimSuffix(key, "']")
			if strings.HasPrefix(prefix, "metadata.labels") {
				return pod.Labels[key], nil
			}
			return pod.Annotations[key], nil
		}
	}
	return "", fmt.Errorf("field %s is not supported", path)
}

// resourceField is a resourceFieldRef's value: the container's limit (or request) in units of the divisor
// (default 1), rounded up, as the kubelet computes it.
func resourceField(c corev1.Container, ref *corev1.ResourceFieldSelector) string {
	kind, name, _ := strings.Cut(ref.Resource, ".")
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		return "0"
	}
	div := int64(1)
	if !ref.Divisor.IsZero() {
		div = ref.Divisor.MilliValue()
		return strconv.FormatInt((q.MilliValue()+div-1)/div, 10)
	}
	return strconv.FormatInt((q.Value()+div-1)/div, 10)
}

// expand replaces $(VAR) with the variable's value, as Kubernetes does in command, args and env values ($$ is a
// literal $; unknown variables stay as they are).
func expand(in []string, vars map[string]string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			if s[i] == '$' && i+1 < len(s) {
				if s[i+1] == '$' {
					b.WriteByte('$')
					i++
					continue
				}
				if s[i+1] == '(' {
					if j := strings.IndexByte(s[i:], ')'); j > 0 {
						if v, ok := vars[s[i+2:i+j]]; ok {
							b.WriteString(v)
							i += j
							continue
						}
					}
				}
			}
			b.WriteByte(s[i])
		}
		out = append(out, b.String())
	}
	return out
}

// home is uid's home directory in the image's /etc/passwd (the host's when the image has none), else /.
func home(img Image, uid int64) string {
	b, err := os.ReadFile(filepath.Join(img.Root, "etc", "passwd"))
	if err != nil {
		if b, err = os.ReadFile("/etc/passwd"); err != nil {
			return "/"
		}
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 6 && f[2] == strconv.FormatInt(uid, 10) && f[5] != "" {
			return f[5]
		}
	}
	return "/"
}

// major and minor split a Linux device number (glibc's gnu_dev_major and gnu_dev_minor).
func major(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^uint64(0xfff) }
func minor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^uint64(0xff) }
