// Command devcluster runs the offline test cluster for the demo: a real kube-apiserver, etcd and
// kube-controller-manager with runpolicy's and KubeVirt's CRDs, KubeVirt's real virt-api and virt-controller
// (test/cluster, built by test/kubevirt/build.sh) with the Sidecar feature gate on, and the node layer
// (test/kubevirt: kubelet, virt-handler). It writes an admin kubeconfig and serves a small control endpoint on
// loopback. It runs until interrupted.
//
// The operator is not run here but given what it needs to run as the Helm chart installs it (test/chartrbac): the
// chart's ServiceAccount, RBAC and admission policies are created, and beside the admin kubeconfig it writes
// operator.kubeconfig (a token of that ServiceAccount), operator.args (the chart's Deployment args, one a line) and
// operator.env (the Deployment's environment, NAME=value a line), rendered with --chart-set values.
//
// With --real-launcher the node runs KubeVirt's real virt-launcher, libvirt and QEMU (TCG: the KubeVirt CR gets
// developerConfiguration.useEmulation) with runpolicy's real hook sidecar for every VMI that boots a kernel from a
// container image (test/launcher; the image is served from --guest-dir, the tiny test guest), and the endpoint
// serves the guest's serial console, as virt-handler does for `virtctl console`:
//
//	POST http://ADDR/console?namespace=NS&name=VM[&timeout=5m]   body: one line typed into the console
//
// It waits until the running VMI's guest has booted to its shell (the prompt "/ # " in the console log), types the
// line and answers with what the guest printed back (the echo of the line left out): everything until the shell
// prompts again, the console closes (the guest ended: a reboot or poweroff inside it) or timeout.
//
// The node layer also plays the guest of the pods it simulates (every pod without --real-launcher):
//
//	POST http://ADDR/guest/{reboot,poweroff,crash,delete-pod}?namespace=NS&name=VM
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	kvv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/kubevirt"
	"github.com/runpolicy/runpolicy/test/launcher"
)

type options struct {
	kubeconfig, addr, image string
	realLauncher            bool
	guestDir, sidecarBinary string
	chartSet                []string
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig-out", "bin/demo/kubeconfig", "Where to write the admin kubeconfig; the operator's kubeconfig, args and env go beside it.")
	flag.StringVar(&o.addr, "control-addr", "127.0.0.1:18080", "Loopback address of the control endpoint.")
	flag.StringVar(&o.image, "hook-sidecar-image", "ghcr.io/runpolicy/hook-sidecar:dev",
		"The operator's --hook-sidecar-image: the node's sidecar container running it reports the guest's SHUTDOWN events.")
	flag.BoolVar(&o.realLauncher, "real-launcher", false,
		"Run KubeVirt's real virt-launcher, libvirt and QEMU (TCG) with runpolicy's hook sidecar for the VMIs that boot a kernel from a container image (needs root, QEMU, libvirt: make test-assets guest).")
	flag.StringVar(&o.guestDir, "guest-dir", "bin/guest", "With --real-launcher: the tiny guest (make guest), served as every kernel boot image.")
	flag.StringVar(&o.sidecarBinary, "hook-sidecar-binary", "bin/hook-sidecar",
		"With --real-launcher: the hook-sidecar binary (make build) run as --hook-sidecar-image.")
	flag.Func("chart-set", "A Helm --set value for the chart the operator's identity and args are rendered from (repeatable); "+
		"the hook sidecar image comes from --hook-sidecar-image.", func(v string) error {
		o.chartSet = append(o.chartSet, v)
		return nil
	})
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	if err := run(o); err != nil {
		log.Fatalf("devcluster: %v", err)
	}
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	logger := ctrl.Log.WithName("node")
	nodeOpts := kubevirt.Options{AuditLog: env.AuditLog, HookSidecarImage: o.image, Logger: &logger}
	if o.realLauncher {
		runner, err := realLauncher(ctx, env, o)
		if err != nil {
			return err
		}
		defer runner.Close() // after the node layer stopped: kills the guests left
		nodeOpts.RealLauncher = runner
	}
	node, err := kubevirt.Start(ctx, env.Config, nodeOpts)
	if err != nil {
		return err
	}
	defer func() { _ = node.Stop() }()

	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	guest := map[string]func(context.Context, string, string) error{
		"reboot": node.GuestReboot, "poweroff": node.GuestPoweroff, "crash": node.GuestCrash, "delete-pod": node.DeleteLauncherPod,
	}
	mux.HandleFunc("POST /guest/{action}", func(w http.ResponseWriter, r *http.Request) {
		f, ok := guest[r.PathValue("action")]
		if !ok {
			http.Error(w, "unknown action", http.StatusNotFound)
			return
		}
		if err := f(r.Context(), r.URL.Query().Get("namespace"), r.URL.Query().Get("name")); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /console", func(w http.ResponseWriter, r *http.Request) {
		timeout := 5 * time.Minute
		if s := r.URL.Query().Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			timeout = d
		}
		line, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		out, err := typeLine(ctx, node, r.URL.Query().Get("namespace"), r.URL.Query().Get("name"),
			strings.TrimRight(string(line), "\r\n"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_, _ = fmt.Fprint(w, out)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()

	if err := os.MkdirAll(filepath.Dir(o.kubeconfig), 0o755); err != nil {
		return err
	}
	op, err := chartrbac.Install(ctx, env, append(chartrbac.HookSidecarImage(o.image), o.chartSet...)...)
	if err != nil {
		return err
	}
	kc, err := os.ReadFile(op.Kubeconfig)
	if err != nil {
		return err
	}
	dir := filepath.Dir(o.kubeconfig)
	for name, data := range map[string][]byte{
		"operator.kubeconfig": kc,
		"operator.args":       lines(op.Args),
		"operator.env":        lines(op.Env),
	} {
		if err := writeFile(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	// The admin kubeconfig appears last: its presence tells the demo script that everything is up.
	kc, err = os.ReadFile(env.Kubeconfig)
	if err != nil {
		return err
	}
	if err := writeFile(o.kubeconfig, kc); err != nil {
		return err
	}
	nodeKind := "simulated node"
	if o.realLauncher {
		nodeKind = "node with the real virt-launcher, libvirt and QEMU (TCG) for kernel-boot VMIs"
	}
	log.Printf("devcluster: up (KubeVirt %s: virt-api, virt-controller; %s; logs in %s); kubeconfig %s, control on http://%s",
		env.KubeVirt.Version, nodeKind, env.Dir(), o.kubeconfig, o.addr)
	<-ctx.Done()
	_ = os.Remove(o.kubeconfig)
	for _, name := range []string{"operator.kubeconfig", "operator.args", "operator.env"} {
		_ = os.Remove(filepath.Join(dir, name))
	}
	log.Printf("devcluster: stopping")
	return nil
}

// lines is one line per element.
func lines(elems []string) []byte {
	var b []byte
	for _, e := range elems {
		b = append(append(b, e...), '\n')
	}
	return b
}

// writeFile writes data to path at once (a rename), readable by its owner only.
func writeFile(path string, data []byte) error {
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// realLauncher prepares the node's real virt-launcher: KubeVirt's launcher binaries (test/kubevirt/build.sh,
// cached), the guest, the hook sidecar, and useEmulation in the KubeVirt CR (this machine's guests run under TCG).
func realLauncher(ctx context.Context, env *cluster.Env, o options) (*launcher.Runner, error) {
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(o.guestDir, f)); err != nil {
			return nil, fmt.Errorf("the tiny guest is not built (make guest): %w", err)
		}
	}
	if _, err := os.Stat(o.sidecarBinary); err != nil {
		return nil, fmt.Errorf("the hook sidecar is not built (make build): %w", err)
	}
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	bins, err := launcher.Build(ctx, root)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.Dir(), "launcher")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	runner, err := launcher.NewRunner(launcher.RunnerOptions{Binaries: bins, HookSidecarImage: o.image,
		HookSidecar: o.sidecarBinary, GuestDir: o.guestDir, Dir: dir})
	if err != nil {
		return nil, err
	}
	if err := useEmulation(ctx, env.Client); err != nil {
		runner.Close()
		return nil, err
	}
	return runner, nil
}

// useEmulation sets the KubeVirt CR's developerConfiguration.useEmulation, as on a cluster without usable KVM:
// virt-controller then renders --allow-emulation for virt-launcher (TCG).
func useEmulation(ctx context.Context, c client.Client) error {
	kv := &kvv1.KubeVirt{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: "kubevirt", Name: "kubevirt"}, kv); err != nil {
		return err
	}
	patch := client.MergeFrom(kv.DeepCopy())
	if kv.Spec.Configuration.DeveloperConfiguration == nil {
		kv.Spec.Configuration.DeveloperConfiguration = &kvv1.DeveloperConfiguration{}
	}
	kv.Spec.Configuration.DeveloperConfiguration.UseEmulation = true
	return c.Patch(ctx, kv, patch)
}

// prompt is the tiny guest's shell prompt (busybox ash as root in /).
const prompt = "/ # "

// typeLine waits until the guest of the running VMI of that name has booted to its shell, types line into its
// serial console and returns what the guest printed back (see the package documentation).
func typeLine(ctx context.Context, node *kubevirt.Node, ns, name, line string) (string, error) {
	var pod *launcher.Pod
	for {
		var err error
		var b []byte
		if pod, err = node.RealLauncherPod(ctx, ns, name); err == nil {
			if b, err = pod.SerialConsoleLog(); err == nil && bytes.Contains(b, []byte(prompt)) {
				break
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				const max = 2048
				if len(b) > max {
					b = b[len(b)-max:]
				}
				domain := "none"
				if evs := pod.Handler().Events(); len(evs) > 0 && evs[len(evs)-1].Domain != nil {
					domain = evs[len(evs)-1].Domain.Status + "/" + evs[len(evs)-1].Domain.Reason
				}
				err = fmt.Errorf("its shell never prompted (domain %s); the console log ends with %q", domain, clean(string(b)))
			}
			return "", fmt.Errorf("%s/%s: no guest shell: %w (%v)", ns, name, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	conn, err := pod.SerialConsole()
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	if _, err := conn.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	var raw []byte
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		raw = append(raw, buf[:n]...)
		out := dropEcho(clean(string(raw)), line)
		if rest, ok := strings.CutSuffix(out, prompt); ok && out != clean(string(raw)) {
			return rest, nil // the shell prompts again
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil // the console closed: QEMU ended
			}
			return out, fmt.Errorf("%s/%s: console: %w", ns, name, err)
		}
	}
}

// csi matches the terminal control sequences the guest's line editor writes (it asks for the cursor position).
var csi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

func clean(s string) string { return strings.ReplaceAll(csi.ReplaceAllString(s, ""), "\r", "") }

// dropEcho removes the terminal's echo of line from the start of out (the line editor wraps long lines), with its
// newline; out is returned as it is while the echo is incomplete.
func dropEcho(out, line string) string {
	i := 0
	for j := 0; j < len(line); j++ {
		for i < len(out) && out[i] == '\n' && line[j] != '\n' {
			i++
		}
		if i >= len(out) || out[i] != line[j] {
			return out
		}
		i++
	}
	if i >= len(out) || out[i] != '\n' {
		return out
	}
	return out[i+1:]
}
