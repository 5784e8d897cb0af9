package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/runpolicy/runpolicy/images"
)

// A real node: Debian's containerd and runc, the CNI plugins, and kubelet, kube-proxy and kube-scheduler built
// like the other kube binaries (build-assets.sh), on this machine's cgroup v1. The node lives in network, mount and
// PID namespaces of its own, so that what it changes stays in them and goes with them:
//
//   - its network namespace holds the pods' bridge, kube-proxy's and the kubelet's iptables chains and
//     net.ipv4.ip_forward; a veth pair links it to the host, where kube-apiserver serves on NodeAPIServerIP;
//   - its mount namespace gets a tmpfs on /run (containerd's state and shim sockets, runc's state, the pods'
//     network namespaces), the node's directories on /var/lib (the kubelet's root, CNI's cache) and /var/log (the
//     pods' logs and /var/log/containers, a path the kubelet hard-codes), and regular files on the few /proc/sys
//     files the kubelet insists on writing (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops), holding the
//     values it wants, so that the host's kernel settings stay as they are;
//   - its PID namespace has test/cluster/nodebox as its init: hostPID pods (virt-handler) see the node's processes,
//     and /proc/1 is the node's (virt-chroot enters /proc/1/ns/mnt).
//
// What the node creates on the host itself, removed on teardown once every process of the node is killed: a root
// of its own in every cgroup hierarchy (cgroupRoot for the kubelet's pods, a system group for containerd and its
// shims), the veth pair and the link holding kube-apiserver's address (rpn-*), with their routes. See
// ../../shared/research/real-node-here.md for the measurements behind each choice.
const (
	// NodeName is the test node's name.
	NodeName = "runpolicy-node"
	// NodeAPIServerIP is the host's address the node reaches through its veth: kube-apiserver serves there, and it is also the
	// kubernetes Service's ClusterIP (the first address of NodeServiceCIDR), so that the certificate envtest issues
	// for the serving address is valid for a pod's in-cluster configuration, which dials the Service's IP.
	NodeAPIServerIP = "10.244.76.1"
	// NodeServiceCIDR is the Services' range.
	NodeServiceCIDR = "10.244.76.0/24"
	// NodeIP is the node's end of the veth, its InternalIP.
	NodeIP = "10.244.78.2"
	// NodePodCIDR is the pods' range on the node's bridge.
	NodePodCIDR = "10.244.77.0/24"

	nodeBridge   = "rpn-br0"
	nodeBridgeIP = "10.244.77.1"
	vethHost     = "rpn-h"
	vethNode     = "rpn-n"
	apiLink      = "rpn-api"
)

// NodeOptions configures the real node (Options.Node).
type NodeOptions struct {
	// Images are OCI image archives imported into the node's containerd (its k8s.io namespace) before the kubelet
	// starts; the node's own pause image is always imported.
	Images []string
	// KubeVirt runs KubeVirt's node half on the node (needs Options.KubeVirt): virt-handler as the DaemonSet
	// KubeVirt's generator describes, and virt-controller's launcher pods, from images built here
	// (kubevirtnode.go), with KubeVirt's useEmulation (no /dev/kvm here).
	KubeVirt bool
}

// Node is the running real node.
type Node struct {
	opts   NodeOptions
	env    *Env
	dir    string
	cgroup string // the cgroup root of the node's processes and pods, in every v1 hierarchy
	holder *process
	// initPID is the host's PID of the node's init (PID 1 in the node's PID namespace).
	initPID int
	// PauseImage is the sandbox image's reference; FetchImage is a small client (test/cluster/nodebox fetch).
	PauseImage, FetchImage string
}

// NodeDeps are the Debian packages the node needs (.ci/run installs them).
var NodeDeps = []string{"containerd", "runc", "containernetworking-plugins", "iptables"}

const cniBin = "/usr/lib/cni"

// checkNodeDeps says which of the node's programs this machine lacks.
func checkNodeDeps() error {
	var missing []string
	for _, p := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "unshare", "nsenter", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBin, p)); err != nil {
			missing = append(missing, filepath.Join(cniBin, p))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the real node needs %s (Debian: apt-get install %s)", strings.Join(missing, ", "),
			strings.Join(NodeDeps, " "))
	}
	if os.Geteuid() != 0 {
		return errors.New("the real node needs root (namespaces, cgroups, a veth pair)")
	}
	return nil
}

// prepareNode creates the node's namespaces and its veth pair: kube-apiserver binds NodeAPIServerIP, so the
// address must exist before it starts.
func (e *Env) prepareNode(opts NodeOptions) (_ *Node, err error) {
	if err := checkNodeDeps(); err != nil {
		return nil, err
	}
	for _, link := range []string{vethHost, apiLink} {
		if exec.Command("ip", "link", "show", link).Run() == nil {
			return nil, fmt.Errorf("a link %s exists already: another test node runs on this machine, or one was "+
				"left behind (ip link del %s)", link, link)
		}
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	n := &Node{opts: opts, env: e, dir: filepath.Join(e.dir, "node"), cgroup: "runpolicy-node-" + hex.EncodeToString(suffix)}
	defer func() {
		if err != nil {
			_ = n.kill()
			_ = n.cleanUp()
		}
	}()
	for _, d := range []string{"varlib", "log", "sysctl", "cni/net.d", "cni/ipam", "containerd"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := n.makeCgroups(); err != nil {
		return nil, err
	}
	// The node's init: nodebox, which reaps what is orphaned in the node's PID namespace. When the test process
	// dies, unshare dies with it (Pdeathsig), takes init with it (--kill-child), and the kernel kills every process
	// of the namespace: nothing of the node outlives the test but its cgroups.
	initBin := filepath.Join(n.dir, "nodebox")
	build := exec.Command("go", "build", "-o", initBin, "./test/cluster/nodebox")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the node's init: %w: %s", err, out)
	}
	holder, err := e.startProcess("node-namespaces", nil, "unshare", "--mount", "--net", "--pid", "--kill-child",
		"--mount-proc", "--propagation", "private", initBin)
	if err != nil {
		return nil, err
	}
	n.holder = holder
	// unshare forks the init once the namespaces are set up.
	if n.initPID, err = child(holder, initBin); err != nil {
		return nil, fmt.Errorf("the node's namespaces did not come up: %w", err)
	}
	if err := n.joinCgroups(n.initPID); err != nil {
		return nil, err
	}
	pid := strconv.Itoa(n.initPID)
	// kube-apiserver's address is on a link of its own, not on the node's veth: it outlives the node's network
	// namespace (and the veth with it) on teardown, so that the node's pods and processes are all gone before
	// kube-apiserver stops, and kube-apiserver keeps its address until it has.
	for _, args := range [][]string{
		{"link", "add", apiLink, "type", "veth", "peer", "name", apiLink + "p"}, // no dummy links in this kernel
		{"link", "set", apiLink + "p", "up"},
		{"addr", "add", NodeAPIServerIP + "/32", "dev", apiLink},
		{"link", "set", apiLink, "up"},
		{"link", "add", vethHost, "type", "veth", "peer", "name", vethNode, "netns", pid},
		{"link", "set", vethHost, "up"},
		{"route", "add", NodeIP + "/32", "dev", vethHost},
		{"route", "add", NodePodCIDR, "via", NodeIP, "dev", vethHost},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := n.inside("set-up", n.setupScript()); err != nil {
		return nil, err
	}
	return n, nil
}

// kubeletSysctls are the kernel settings the kubelet writes unless they hold these values (its
// setupKernelTunables); those that differ on the host are shadowed in the node's mount namespace.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

func (n *Node) setupScript() string {
	var b strings.Builder
	fmt.Fprintf(&b, "set -e\n")
	fmt.Fprintf(&b, "mount -t tmpfs -o mode=755 runpolicy-node-run /run\n")
	fmt.Fprintf(&b, "mount --bind %s /var/lib\n", filepath.Join(n.dir, "varlib"))
	fmt.Fprintf(&b, "mount --bind %s /var/log\n", filepath.Join(n.dir, "log"))
	keys := make([]string, 0, len(kubeletSysctls))
	for k := range kubeletSysctls {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		cur, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil || strings.TrimSpace(string(cur)) == kubeletSysctls[k] {
			continue
		}
		f := filepath.Join(n.dir, "sysctl", strings.ReplaceAll(k, "/", "."))
		fmt.Fprintf(&b, "echo %s > %s\nmount --bind %s /proc/sys/%s\n", kubeletSysctls[k], f, f, k)
	}
	fmt.Fprintf(&b, "ip link set lo up\n")
	fmt.Fprintf(&b, "ip addr add %s/32 dev %s\nip link set %s up\n", NodeIP, vethNode, vethNode)
	fmt.Fprintf(&b, "ip route add %s/32 dev %s\nip route add default via %s dev %s\n", NodeAPIServerIP, vethNode,
		NodeAPIServerIP, vethNode)
	// The bridge with its address made here, so that the bridge plugin need not be the pods' gateway: it then
	// changes no sysctl (the node's namespace forwards on its own, below).
	fmt.Fprintf(&b, "ip link add %s type bridge\nip addr add %s/24 dev %s\nip link set %s up\n", nodeBridge,
		nodeBridgeIP, nodeBridge, nodeBridge)
	fmt.Fprintf(&b, "echo 1 > /proc/sys/net/ipv4/ip_forward\n")
	// Bidirectional mounts (virt-handler's /var/run/kubevirt and /var/lib/kubelet) need shared mounts; these are
	// the node's namespace's own peer groups.
	fmt.Fprintf(&b, "mount --make-rshared /\n")
	return b.String()
}

// inside runs a shell script in the node's namespaces.
func (n *Node) inside(what, script string) error {
	cmd := exec.Command("nsenter", n.insideArgs("sh", "-c", script)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node %s: %w: %s", what, err, out)
	}
	return nil
}

// child waits for the process that p forks to run exe (unshare's and nsenter's, which fork to enter a PID
// namespace), and returns its PID.
func child(p *process, exe string) (int, error) {
	pid := 0
	err := waitFor(10*time.Second, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.cmd.Process.Pid, p.cmd.Process.Pid))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return err == nil && filepath.Base(got) == filepath.Base(exe)
	})
	if err != nil {
		return 0, fmt.Errorf("%s: no child running %s", p.name, exe)
	}
	return pid, nil
}

// startInside starts bin in the node's namespaces, as process name, and puts it in the node's system cgroup.
func (n *Node) startInside(name, bin string, args ...string) (*process, error) {
	p, err := n.env.startProcess(name, nil, "nsenter", n.insideArgs(append([]string{bin}, args...)...)...)
	if err != nil {
		return nil, err
	}
	pid, err := child(p, bin)
	if err != nil {
		return nil, err
	}
	return p, n.joinCgroups(pid)
}

// insideArgs prefixes a command so that it runs in the node's namespaces.
func (n *Node) insideArgs(args ...string) []string {
	return append([]string{"--target", strconv.Itoa(n.initPID), "--mount", "--net", "--pid", "--"}, args...)
}

// start brings containerd, the node's images, kube-proxy, the kubelet and kube-scheduler up, once kube-apiserver
// and kube-controller-manager run, and waits for the Node to be Ready.
func (n *Node) start(assets string) error {
	if err := n.buildNodeImages(); err != nil {
		return err
	}
	if err := n.writeConfigs(); err != nil {
		return err
	}
	ctrdBin, err := exec.LookPath("containerd")
	if err != nil {
		return err
	}
	ctrd, err := n.startInside("containerd", ctrdBin, "--config", filepath.Join(n.dir, "containerd.toml"))
	if err != nil {
		return err
	}
	if err := waitFor(30*time.Second, func() bool {
		return n.inside("containerd ready", "ctr version >/dev/null 2>&1") == nil
	}); err != nil {
		return fmt.Errorf("containerd did not answer, see %s", ctrd.log)
	}
	if err := n.importImages(); err != nil {
		return err
	}
	nodeUser := envtest.User{Name: "system:node:" + NodeName, Groups: []string{"system:nodes", "system:masters"}}
	kubeletKC, err := n.env.userKubeconfig("kubelet", nodeUser)
	if err != nil {
		return err
	}
	proxyKC, err := n.env.userKubeconfig("kube-proxy",
		envtest.User{Name: "system:kube-proxy", Groups: []string{"system:node-proxier", "system:masters"}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.dir, "kube-proxy.yaml"), []byte(kubeProxyConfig(proxyKC)), 0o600); err != nil {
		return err
	}
	if _, err := n.startInside("kube-proxy", filepath.Join(assets, "kube-proxy"),
		"--config", filepath.Join(n.dir, "kube-proxy.yaml"), "--v=2"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.dir, "kubelet.yaml"), []byte(n.kubeletConfig()), 0o600); err != nil {
		return err
	}
	if _, err := n.startInside("kubelet", filepath.Join(assets, "kubelet"),
		"--config", filepath.Join(n.dir, "kubelet.yaml"), "--kubeconfig", kubeletKC,
		"--hostname-override", NodeName, "--node-ip", NodeIP, "--v=2"); err != nil {
		return err
	}
	schedKC, err := n.env.userKubeconfig("kube-scheduler",
		envtest.User{Name: "system:kube-scheduler", Groups: []string{"system:masters"}})
	if err != nil {
		return err
	}
	if _, err := n.env.startProcess("kube-scheduler", nil, filepath.Join(assets, "kube-scheduler"),
		"--kubeconfig="+schedKC, "--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return err
	}
	return n.waitReady()
}

func (n *Node) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		node := &corev1.Node{}
		if err := n.env.Client.Get(ctx, client.ObjectKey{Name: NodeName}, node); err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready within 2 minutes; see the kubelet's log in %s", NodeName, n.env.dir)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (n *Node) writeConfigs() error {
	containerd := fmt.Sprintf(`version = 2
root = %[1]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]q
  # Lowering a process's oom_score_adj (CRI asks -998 for sandboxes) needs CAP_SYS_RESOURCE, which root lacks here.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[3]q
    conf_dir = %[4]q
`, filepath.Join(n.dir, "containerd"), n.PauseImage, cniBin, filepath.Join(n.dir, "cni", "net.d"))
	if err := os.WriteFile(filepath.Join(n.dir, "containerd.toml"), []byte(containerd), 0o600); err != nil {
		return err
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "runpolicy-node",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": false,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": %q,
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0", "gw": %q}]
    }
  }]
}
`, nodeBridge, filepath.Join(n.dir, "cni", "ipam"), NodePodCIDR, nodeBridgeIP, nodeBridgeIP)
	return os.WriteFile(filepath.Join(n.dir, "cni", "net.d", "10-runpolicy-node.conflist"), []byte(cni), 0o600)
}

func (n *Node) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: true
cgroupRoot: /%s
enforceNodeAllocatable: []
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
# The node's images come from archives and cannot be pulled back: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: ""
`, n.cgroup, NodeIP)
}

func kubeProxyConfig(kubeconfig string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
iptables:
  # Pod -> Service -> pod on the same bridge: the reply must come back through the node's namespace (no
  # br_netfilter here), so every Service connection is masqueraded.
  masqueradeAll: true
  localhostNodePorts: false
# conntrack limits are host-wide sysctls: leave them as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
`, kubeconfig, NodeName, NodePodCIDR)
}

// importImages builds the node's pause and fetch images and imports them, with opts.Images, into containerd.
func (n *Node) importImages() error {
	archives := slices.Clone(n.opts.Images)
	archives = append(archives, filepath.Join(n.dir, "images", nodePause.ArchiveName()),
		filepath.Join(n.dir, "images", nodeFetch.ArchiveName()))
	for _, a := range archives {
		if err := n.inside("image import", "ctr -n k8s.io images import "+a+" >/dev/null"); err != nil {
			return err
		}
	}
	return nil
}

// The node's two images: nodebox as the pod sandbox, and as a client.
var (
	nodePause = images.Spec{Name: "runpolicy-node-pause", Package: "./test/cluster/nodebox", Binary: "/pause",
		User: "pause", Group: "pause", UID: 65535, GID: 65535, Home: "/home/pause",
		Title: "runpolicy-node-pause", Description: "the test node's pod sandbox"}
	nodeFetch = images.Spec{Name: "runpolicy-node-fetch", Package: "./test/cluster/nodebox", Binary: "/usr/local/bin/nodebox",
		User: "fetch", Group: "fetch", UID: 65532, GID: 65532, Home: "/home/fetch",
		Title: "runpolicy-node-fetch", Description: "the test node's HTTP client (nodebox fetch)"}
)

// buildNodeImages writes the pause and fetch images into the node's dir (before containerd's config names the
// pause image).
func (n *Node) buildNodeImages() error {
	root := RepoRoot()
	meta, err := images.MetadataFromRepo(root)
	if err != nil {
		return err
	}
	meta.Repository = "runpolicy.test"
	for _, s := range []*string{&n.PauseImage, &n.FetchImage} {
		spec := nodePause
		if s == &n.FetchImage {
			spec = nodeFetch
		}
		res, err := images.Build(context.Background(), root, filepath.Join(n.dir, "images"), spec, meta)
		if err != nil {
			return err
		}
		*s = res.Ref
	}
	return nil
}

var cgroupV1 = []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd"}

func cgroupMounts() []string {
	var out []string
	for _, h := range cgroupV1 {
		if st, err := os.Stat(filepath.Join("/sys/fs/cgroup", h)); err == nil && st.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", h))
		}
	}
	return out
}

func (n *Node) makeCgroups() error {
	for _, m := range cgroupMounts() {
		for _, d := range []string{n.cgroup, filepath.Join(n.cgroup, "system")} {
			p := filepath.Join(m, d)
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if filepath.Base(m) == "cpuset" {
				// A v1 cpuset starts empty: copy its parent's CPUs and memory nodes, or nothing can join it.
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(filepath.Dir(p), f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(p, f), v, 0o644); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// joinCgroups moves pid into the node's system cgroup in every hierarchy: the processes it starts (containerd's
// shims) are then found and killed on Stop.
func (n *Node) joinCgroups(pid int) error {
	for _, m := range cgroupMounts() {
		if err := os.WriteFile(filepath.Join(m, n.cgroup, "system", "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", m, err)
		}
	}
	return nil
}

// kill kills everything in the node's cgroups (the pods' containers, the shims, containerd and the node's init:
// the namespaces, the bridge, the veth pair and the iptables chains go with the last of them). The kubelet and the
// other processes were stopped by Env.Stop before.
func (n *Node) kill() error {
	var errs []error
	if n.holder != nil {
		n.holder.stop() // --kill-child: init goes, and the kernel kills every process of the PID namespace
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		pids := n.cgroupPIDs()
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("node: processes %v outlived SIGKILL", pids))
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// cleanUp removes the node's cgroups and kube-apiserver's address, after kill and once kube-apiserver stopped.
func (n *Node) cleanUp() error {
	var errs []error
	for _, m := range cgroupMounts() {
		root := filepath.Join(m, n.cgroup)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // leaf first
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	for _, link := range []string{vethHost, apiLink} {
		if exec.Command("ip", "link", "show", link).Run() == nil {
			if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link del %s: %w: %s", link, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to the node's processes whose command line holds all of args (NUL-separated arguments, each
// matched as a substring of one): as a process that crashes. It returns how many it killed.
func (n *Node) Kill(args ...string) int {
	killed := 0
	for _, pid := range n.cgroupPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if !slices.ContainsFunc(args, func(a string) bool {
			return !slices.ContainsFunc(argv, func(v string) bool { return strings.Contains(v, a) })
		}) && syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}

func (n *Node) cgroupPIDs() []int {
	var pids []int
	for _, m := range cgroupMounts() {
		_ = filepath.WalkDir(filepath.Join(m, n.cgroup), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for f := range strings.FieldsSeq(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

func waitFor(timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// NodeControllers are the kube-controller-manager controllers a cluster with a node runs beside the garbage
// collector: Deployments and DaemonSets to pods, Services to EndpointSlices (for kube-proxy), the CA and the
// ServiceAccounts pods mount, the node lifecycle (the kubelet registers its Node tainted not-ready until that
// controller sees it Ready), and the protection of claims in use (without it a PVC keeps its
// kubernetes.io/pvc-protection finalizer, and its namespace never goes).
var NodeControllers = []string{"deployment-controller", "replicaset-controller", "daemonset-controller",
	"endpointslice-controller", "root-ca-certificate-publisher-controller", "serviceaccount-controller",
	"garbage-collector-controller", "namespace-controller", "node-lifecycle-controller",
	"persistentvolumeclaim-protection-controller"}
