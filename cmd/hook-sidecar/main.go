// Command hook-sidecar is runpolicy's KubeVirt hook sidecar. It serves KubeVirt's hook API on a unix socket in the
// hooks directory (OnDefineDomain: on_reboot=destroy plus a second QMP monitor), then records QEMU's SHUTDOWN events
// from that monitor in its termination log, and exits 0 when QEMU's monitor closes.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/runpolicy/runpolicy/internal/hooksidecar"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("hook-sidecar", flag.ContinueOnError)
	var cfg hooksidecar.Config
	fs.StringVar(&cfg.HooksDir, "hooks-dir", "/var/run/kubevirt-hooks", "KubeVirt's shared hook sockets directory")
	fs.StringVar(&cfg.SocketName, "socket-name", "runpolicy.sock", "name of the hook gRPC socket in the hooks directory")
	fs.StringVar(&cfg.QMPSocketName, "qmp-socket-name", "runpolicy.qmp", "name of the QMP monitor socket QEMU creates in the hooks directory")
	fs.StringVar(&cfg.TerminationLog, "termination-log", "/dev/termination-log", "file the SHUTDOWN events are appended to")
	fs.DurationVar(&cfg.QMPTimeout, "qmp-timeout", 10*time.Minute, "how long to wait for QEMU's QMP socket")
	verbose := fs.Bool("v", false, "log every QMP event")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// SIGTERM (pod deletion) only cancels the wait for QEMU: once connected, the monitor keeps reading until QEMU
	// exits, so the stop is recorded; the kubelet's grace period bounds that.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := hooksidecar.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("Hook sidecar failed", "error", err.Error())
		return 1
	}
	return 0
}
