// Command devcluster runs the offline test cluster for the demo and for trying runpolicy by hand: a real
// kube-apiserver, etcd and kube-controller-manager with KubeVirt's CRDs, KubeVirt's real virt-api and
// virt-controller (test/cluster, built by test/kubevirt/build.sh) with the Sidecar feature gate on. It writes an
// admin kubeconfig, serves a small control endpoint on loopback and runs until interrupted.
//
// With --real-node (make demo), the cluster has a real node (test/cluster node.go: containerd, kubelet, kube-proxy,
// kube-scheduler) running KubeVirt's node half: virt-handler as its DaemonSet, and the launcher pods virt-controller
// creates, with libvirt and QEMU (TCG, useEmulation). The OCI archives given with --import (make images: the
// operator's and the hook sidecar's images) and the tiny guest from --guest-dir, as the kernel boot image
// --guest-image, are imported into the node's containerd. runpolicy's CRDs are left to the chart: install it with
// helm, as a user does. The endpoint types into a guest's serial console with KubeVirt's virtctl (`virtctl
// console`: virt-api, virt-handler, the launcher pod's serial socket):
//
//	POST http://ADDR/console?namespace=NS&name=VM[&timeout=5m]   body: one line typed into the console
//
// It presses Enter until the running VMI's guest has booted to its shell (the prompt "/ # "), types the line and
// answers with what the guest printed back (the echo of the line left out): everything until the shell prompts
// again, the console closes (the guest ended: a reboot or poweroff inside it) or timeout.
//
// Without --real-node, the node is test/kubevirt's simulated layer (kubelet, virt-handler) and the operator is not
// run here but given what it needs to run as the Helm chart installs it (test/chartrbac): the chart's
// ServiceAccount, RBAC and admission policies are created, and beside the admin kubeconfig it writes
// operator.kubeconfig (a token of that ServiceAccount), operator.args (the chart's Deployment args, one a line) and
// operator.env (the Deployment's environment, NAME=value a line), rendered with --chart-set values. The endpoint
// then plays the guests:
//
//	POST http://ADDR/guest/{reboot,poweroff,crash,delete-pod}?namespace=NS&name=VM
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/test/chartrbac"
	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/guest"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

type options struct {
	kubeconfig, addr, image string
	realNode                bool
	imports                 []string
	guestDir, guestImage    string
	chartSet                []string
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig-out", "bin/demo/kubeconfig", "Where to write the admin kubeconfig; without --real-node the operator's kubeconfig, args and env go beside it.")
	flag.StringVar(&o.addr, "control-addr", "127.0.0.1:18080", "Loopback address of the control endpoint.")
	flag.BoolVar(&o.realNode, "real-node", false,
		"Run a real node with KubeVirt's virt-handler and launcher pods (needs root, containerd: make test-assets guest images).")
	flag.Func("import", "With --real-node: an OCI image archive to import into the node's containerd (repeatable; make images writes bin/images/*.tar).",
		func(v string) error {
			o.imports = append(o.imports, v)
			return nil
		})
	flag.StringVar(&o.guestDir, "guest-dir", "bin/guest", "With --real-node: the tiny guest (make guest), imported as --guest-image.")
	flag.StringVar(&o.guestImage, "guest-image", "runpolicy.test/tiny-guest:dev", "With --real-node: the tiny guest's kernel boot image reference.")
	flag.StringVar(&o.image, "hook-sidecar-image", "ghcr.io/runpolicy/hook-sidecar:dev",
		"Without --real-node: the operator's --hook-sidecar-image; the simulated node reports the guest's end as its sidecar would.")
	flag.Func("chart-set", "Without --real-node: a Helm --set value for the chart the operator's identity and args are rendered from (repeatable).",
		func(v string) error {
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
	if err := os.MkdirAll(filepath.Dir(o.kubeconfig), 0o755); err != nil {
		return err
	}
	mux := http.NewServeMux()
	var env *cluster.Env
	var err error
	var files []string // written beside the kubeconfig, removed at the end
	if o.realNode {
		env, err = startRealNode(o, mux)
		if err != nil {
			return err
		}
		defer func() { _ = env.Stop() }()
	} else {
		env, err = cluster.Start(cluster.Options{GarbageCollector: true,
			KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
		if err != nil {
			return err
		}
		defer func() { _ = env.Stop() }()
		logger := ctrl.Log.WithName("node")
		node, err := kubevirt.Start(ctx, env.Config, kubevirt.Options{AuditLog: env.AuditLog, HookSidecarImage: o.image, Logger: &logger})
		if err != nil {
			return err
		}
		defer func() { _ = node.Stop() }()
		serveGuest(mux, node)
		if files, err = operatorFiles(ctx, env, o); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()

	// The admin kubeconfig appears last: its presence tells the demo script that everything is up.
	kc, err := os.ReadFile(env.Kubeconfig)
	if err != nil {
		return err
	}
	if err := writeFile(o.kubeconfig, kc); err != nil {
		return err
	}
	nodeKind := "a simulated node"
	if o.realNode {
		nodeKind = fmt.Sprintf("a real node %s with KubeVirt %s's virt-handler", cluster.NodeName, cluster.KubeVirtNodeVersion())
	}
	log.Printf("devcluster: up (KubeVirt %s: virt-api, virt-controller; %s; logs in %s); kubeconfig %s, control on http://%s",
		env.KubeVirt.Version, nodeKind, env.Dir(), o.kubeconfig, o.addr)
	<-ctx.Done()
	for _, f := range append(files, o.kubeconfig) {
		_ = os.Remove(f)
	}
	log.Printf("devcluster: stopping")
	return nil
}

// startRealNode starts the cluster with a real node running KubeVirt's node half, the images imported, and serves
// POST /console with virtctl.
func startRealNode(o options, mux *http.ServeMux) (*cluster.Env, error) {
	for _, f := range []string{guest.Kernel, guest.Initrd} {
		if _, err := os.Stat(filepath.Join(o.guestDir, f)); err != nil {
			return nil, fmt.Errorf("the tiny guest is not built (make guest): %w", err)
		}
	}
	imports := make([]string, 0, len(o.imports)+1)
	for _, a := range o.imports {
		if _, err := os.Stat(a); err != nil {
			return nil, fmt.Errorf("--import: %w (make images)", err)
		}
		abs, err := filepath.Abs(a) // the node imports it from its own mount namespace
		if err != nil {
			return nil, err
		}
		imports = append(imports, abs)
	}
	tmp, err := os.MkdirTemp("", "devcluster-guest-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(tmp) }() // imported by cluster.Start
	guestArchive, err := guest.WriteImage(o.guestDir, tmp, o.guestImage)
	if err != nil {
		return nil, err
	}
	env, err := cluster.Start(cluster.Options{
		KubeVirt:  &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}},
		Node:      &cluster.NodeOptions{KubeVirt: true, Images: append(imports, guestArchive)},
		ChartCRDs: true,
	})
	if err != nil {
		return nil, err
	}
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
		c := console{virtctl: env.KubeVirt.Virtctl, kubeconfig: env.Kubeconfig,
			namespace: r.URL.Query().Get("namespace"), name: r.URL.Query().Get("name")}
		out, err := c.typeLine(ctx, strings.TrimRight(string(line), "\r\n"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_, _ = fmt.Fprint(w, out)
	})
	return env, nil
}

// serveGuest serves POST /guest/{action}: the simulated node plays the guest's reboot, poweroff, crash, or the
// launcher pod's deletion.
func serveGuest(mux *http.ServeMux, node *kubevirt.Node) {
	actions := map[string]func(context.Context, string, string) error{
		"reboot": node.GuestReboot, "poweroff": node.GuestPoweroff, "crash": node.GuestCrash, "delete-pod": node.DeleteLauncherPod,
	}
	mux.HandleFunc("POST /guest/{action}", func(w http.ResponseWriter, r *http.Request) {
		f, ok := actions[r.PathValue("action")]
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
}

// operatorFiles creates the chart's ServiceAccount, RBAC and admission policies and writes the operator's
// kubeconfig, args and env beside the admin kubeconfig; it returns their paths.
func operatorFiles(ctx context.Context, env *cluster.Env, o options) ([]string, error) {
	op, err := chartrbac.Install(ctx, env, append(chartrbac.HookSidecarImage(o.image), o.chartSet...)...)
	if err != nil {
		return nil, err
	}
	kc, err := os.ReadFile(op.Kubeconfig)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(o.kubeconfig)
	var paths []string
	for name, data := range map[string][]byte{
		"operator.kubeconfig": kc,
		"operator.args":       lines(op.Args),
		"operator.env":        lines(op.Env),
	} {
		path := filepath.Join(dir, name)
		if err := writeFile(path, data); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
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
