package hooksidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

const (
	// DefaultHooksDir is where KubeVirt mounts the launcher pod's hook-sidecar-sockets emptyDir, in the sidecar
	// containers and in the compute container alike (KubeVirt's hooks.HookSocketsSharedDirectory).
	DefaultHooksDir = "/var/run/kubevirt-hooks"
	// ContainerNameEnv is the variable KubeVirt sets to the sidecar's container name, hook-sidecar-N
	// (pkg/virt-controller/services/template.go). It names the emptyDir subdirectory the sidecar sees.
	ContainerNameEnv = "CONTAINER_NAME"
)

// Config is the sidecar's configuration (cmd/hook-sidecar flags and CONTAINER_NAME).
//
// In a virt-launcher pod the hooks directory has two views. KubeVirt mounts the hook-sidecar-sockets emptyDir into
// each sidecar container at /var/run/kubevirt-hooks with subPath <container name>, so the sidecar sees only its own
// subdirectory there; the compute container (virt-launcher, libvirt, QEMU) sees the whole emptyDir at the same
// path. The sidecar's /var/run/kubevirt-hooks/runpolicy.qmp is therefore
// /var/run/kubevirt-hooks/hook-sidecar-N/runpolicy.qmp to QEMU, and that is the path the domain must name.
type Config struct {
	// HooksDir is the hooks directory as this container sees it: its own subdirectory of the emptyDir. The gRPC
	// socket is served and the QMP socket dialled here.
	HooksDir string
	// ComputeHooksDir is where the compute container sees the whole emptyDir. The domain names the QMP socket as
	// ComputeHooksDir/ContainerName/QMPSocketName, so QEMU creates it in this sidecar's subdirectory.
	ComputeHooksDir string
	// ContainerName is the sidecar's container name (CONTAINER_NAME), the emptyDir subdirectory mounted at HooksDir.
	ContainerName string
	// SocketName is the gRPC socket virt-launcher finds in HooksDir.
	SocketName string
	// QMPSocketName is the QMP socket QEMU creates in HooksDir.
	QMPSocketName string
	// TerminationLog is where SHUTDOWN events are written (the kubelet's termination message path).
	TerminationLog string
	// QMPTimeout bounds the wait for QEMU's QMP socket.
	QMPTimeout time.Duration
	Logger     *slog.Logger
}

// containerName is a Kubernetes container name (a DNS-1123 label), so it is one path element.
var containerName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// QMPSockets returns the QMP socket path as this container dials it and as QEMU in the compute container sees it
// (the path written into the domain). It fails, naming CONTAINER_NAME, without a valid container name: the path
// in the domain would be wrong and the sidecar would never see QEMU's monitor.
func (c Config) QMPSockets() (local, compute string, err error) {
	switch {
	case c.ContainerName == "":
		return "", "", fmt.Errorf("%s is not set: KubeVirt sets it to the sidecar's container name (hook-sidecar-N), "+
			"which names the subdirectory of %s that QEMU creates the QMP socket in", ContainerNameEnv, c.ComputeHooksDir)
	case !containerName.MatchString(c.ContainerName):
		return "", "", fmt.Errorf("%s=%q is not a container name (hook-sidecar-N)", ContainerNameEnv, c.ContainerName)
	case c.HooksDir == "":
		return "", "", errors.New("no hooks directory")
	case !filepath.IsAbs(c.ComputeHooksDir):
		return "", "", fmt.Errorf("compute hooks directory %q is not an absolute path", c.ComputeHooksDir)
	case c.QMPSocketName == "" || filepath.Base(c.QMPSocketName) != c.QMPSocketName:
		return "", "", fmt.Errorf("QMP socket name %q is not a file name", c.QMPSocketName)
	}
	return filepath.Join(c.HooksDir, c.QMPSocketName),
		filepath.Join(c.ComputeHooksDir, c.ContainerName, c.QMPSocketName), nil
}

// Run serves the hook gRPC API and runs the monitor. It returns nil when QEMU's monitor closes (or when ctx ends
// before QEMU started), and an error when the configuration is invalid (before anything is created), the socket
// never became usable or the termination log failed.
func Run(ctx context.Context, cfg Config) error {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	qmpSocket, domainQMPSocket, err := cfg.QMPSockets()
	if err != nil {
		return err
	}
	tlog, err := OpenTerminationLog(cfg.TerminationLog)
	if err != nil {
		return err
	}
	defer func() { _ = tlog.Close() }()

	if err := os.MkdirAll(cfg.HooksDir, 0o755); err != nil {
		return fmt.Errorf("create hooks directory: %w", err)
	}
	grpcSocket := filepath.Join(cfg.HooksDir, cfg.SocketName)
	l, err := ListenUnix(grpcSocket)
	if err != nil {
		return err
	}
	srv := NewGRPCServer(&Hooks{QMPSocket: domainQMPSocket, Logger: logger})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	logger.Info("Serving KubeVirt hook API", "socket", grpcSocket, "versions", []string{VersionV1alpha3, VersionV1alpha2},
		"qmpSocket", qmpSocket, "domainQMPSocket", domainQMPSocket)
	defer func() {
		srv.Stop()
		_ = os.Remove(grpcSocket)
	}()

	monitored := make(chan error, 1)
	go func() {
		monitored <- Monitor(ctx, MonitorConfig{
			QMPSocket:      qmpSocket,
			ConnectTimeout: cfg.QMPTimeout,
			Log:            tlog,
			Logger:         logger,
		})
	}()

	select {
	case err := <-served:
		return fmt.Errorf("gRPC server stopped: %w", err)
	case err := <-monitored:
		if errors.Is(err, ErrStoppedBeforeQEMU) {
			logger.Info("Stopped before QEMU started; nothing to report")
			return nil
		}
		return err
	}
}
