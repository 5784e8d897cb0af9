package hooksidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Config is the sidecar's configuration (cmd/hook-sidecar flags).
type Config struct {
	// HooksDir is KubeVirt's shared hooks directory (/var/run/kubevirt-hooks), mounted in the compute container too.
	HooksDir string
	// SocketName is the gRPC socket virt-launcher finds in HooksDir.
	SocketName string
	// QMPSocketName is the QMP socket QEMU creates in HooksDir.
	QMPSocketName string
	// TerminationLog is where SHUTDOWN events are written (the kubelet's termination message path).
	TerminationLog string
	// QMPTimeout bounds the wait for QEMU's QMP socket.
	QMPTimeout time.Duration
	Logger     *slog.Logger
	// OnConnected is passed to the monitor (tests).
	OnConnected func()
}

// Run serves the hook gRPC API and runs the monitor. It returns nil when QEMU's monitor closes (or when ctx ends
// before QEMU started), and an error when the socket never became usable or the termination log failed.
func Run(ctx context.Context, cfg Config) error {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tlog, err := OpenTerminationLog(cfg.TerminationLog)
	if err != nil {
		return err
	}
	defer func() { _ = tlog.Close() }()

	if err := os.MkdirAll(cfg.HooksDir, 0o755); err != nil {
		return fmt.Errorf("create hooks directory: %w", err)
	}
	qmpSocket := filepath.Join(cfg.HooksDir, cfg.QMPSocketName)
	grpcSocket := filepath.Join(cfg.HooksDir, cfg.SocketName)
	l, err := ListenUnix(grpcSocket)
	if err != nil {
		return err
	}
	srv := NewGRPCServer(&Hooks{QMPSocket: qmpSocket, Logger: logger})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	logger.Info("Serving KubeVirt hook API", "socket", grpcSocket, "versions", []string{VersionV1alpha3, VersionV1alpha2})
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
			OnConnected:    cfg.OnConnected,
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
