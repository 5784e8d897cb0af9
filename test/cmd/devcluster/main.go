// Command devcluster runs the offline test cluster for the demo: a real kube-apiserver, etcd and
// kube-controller-manager with runpolicy's and KubeVirt's CRDs, KubeVirt's real virt-api and virt-controller
// (test/cluster, built by test/kubevirt/build.sh) with the Sidecar feature gate on, and the simulated node
// (test/kubevirt: kubelet, virt-handler, the guests). It writes an admin kubeconfig and serves a small control
// endpoint on loopback that plays the guest:
//
//	POST http://ADDR/guest/{reboot,poweroff,crash,delete-pod}?namespace=NS&name=VM
//
// It runs until interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/runpolicy/runpolicy/test/cluster"
	"github.com/runpolicy/runpolicy/test/kubevirt"
)

func main() {
	kubeconfig := flag.String("kubeconfig-out", "bin/demo/kubeconfig", "Where to write the admin kubeconfig.")
	addr := flag.String("control-addr", "127.0.0.1:18080", "Loopback address of the guest control endpoint.")
	image := flag.String("hook-sidecar-image", "ghcr.io/runpolicy/hook-sidecar:dev",
		"The operator's --hook-sidecar-image: the node layer's sidecar container running it reports the guest's SHUTDOWN events.")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	if err := run(*kubeconfig, *addr, *image); err != nil {
		log.Fatalf("devcluster: %v", err)
	}
}

func run(kubeconfig, addr, image string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := cluster.Start(cluster.Options{GarbageCollector: true,
		KubeVirt: &cluster.KubeVirtOptions{FeatureGates: []string{"Sidecar"}}})
	if err != nil {
		return err
	}
	defer env.Stop()
	node, err := kubevirt.Start(ctx, env.Config, kubevirt.Options{AuditLog: env.AuditLog, HookSidecarImage: image})
	if err != nil {
		return err
	}
	defer node.Stop()

	ln, err := net.Listen("tcp", addr)
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
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	// The kubeconfig appears last: its presence tells the demo script that everything is up.
	kc, err := os.ReadFile(env.Kubeconfig)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(kubeconfig+".tmp", kc, 0o600); err != nil {
		return err
	}
	if err := os.Rename(kubeconfig+".tmp", kubeconfig); err != nil {
		return err
	}
	log.Printf("devcluster: up (KubeVirt %s: virt-api, virt-controller; logs in %s); kubeconfig %s, guest control on http://%s",
		env.KubeVirt.Version, env.Dir(), kubeconfig, addr)
	<-ctx.Done()
	_ = os.Remove(kubeconfig)
	log.Printf("devcluster: stopping")
	return nil
}
