// Command hook-sidecar is runpolicy's KubeVirt hook sidecar. It serves KubeVirt's hook API on a unix socket in the
// hooks directory (OnDefineDomain: on_reboot=destroy plus a second QMP monitor), then records QEMU's SHUTDOWN events
// from that monitor in its termination log, and exits 0 when QEMU's monitor closes.
//
// In the virt-launcher pod the sidecar sees only its own subdirectory of the shared hooks emptyDir at
// /var/run/kubevirt-hooks, while QEMU sees the whole emptyDir there: the domain names the QMP socket
// /var/run/kubevirt-hooks/$CONTAINER_NAME/runpolicy.qmp and the sidecar dials /var/run/kubevirt-hooks/runpolicy.qmp.
// KubeVirt sets CONTAINER_NAME (hook-sidecar-N); without it the sidecar refuses to start (exit 2).
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
	cfg := hooksidecar.Config{ContainerName: os.Getenv(hooksidecar.ContainerNameEnv)}
	fs.StringVar(&cfg.HooksDir, "hooks-dir", hooksidecar.DefaultHooksDir,
		"this container's hooks directory: its own subdirectory of the pod's hook-sidecar-sockets emptyDir")
	fs.StringVar(&cfg.ComputeHooksDir, "compute-hooks-dir", hooksidecar.DefaultHooksDir,
		"where the compute container (libvirt, QEMU) sees the whole emptyDir; the domain names the QMP socket "+
			"<compute-hooks-dir>/$"+hooksidecar.ContainerNameEnv+"/<qmp-socket-name>")
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
	// A wrong QMP socket path in the domain would fail silently (QEMU's monitor in a directory the sidecar never
	// sees), so an unusable configuration stops the sidecar before it serves the hook API.
	if _, _, err := cfg.QMPSockets(); err != nil {
		cfg.Logger.Error("Invalid hook sidecar configuration", "error", err.Error())
		return 2
	}

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
