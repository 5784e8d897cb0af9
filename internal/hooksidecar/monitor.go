package hooksidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"time"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/qmp"
	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// ErrStoppedBeforeQEMU is returned by Monitor when its context ends before QEMU's monitor came up.
var ErrStoppedBeforeQEMU = errors.New("stopped before QEMU's QMP monitor came up")

// MonitorConfig configures Monitor.
type MonitorConfig struct {
	// QMPSocket is the path of the monitor socket the hook added to QEMU's command line, as this container sees it.
	QMPSocket string
	// ConnectTimeout bounds how long to wait for QEMU to create and accept on the socket.
	ConnectTimeout time.Duration
	// RetryInterval is the pause between connection attempts; 100ms when zero.
	RetryInterval time.Duration
	// Log receives the SHUTDOWN events.
	Log *TerminationLog
	// Logger logs progress and errors.
	Logger *slog.Logger
}

// Monitor waits for QEMU's QMP socket, negotiates capabilities and appends every SHUTDOWN event to the termination
// log until QEMU closes the monitor, which is a normal end (nil). ctx only bounds the wait for the socket: once
// connected, Monitor reads until QEMU exits, so a stop from outside (SIGTERM to the pod) is still recorded.
func Monitor(ctx context.Context, cfg MonitorConfig) error {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	conn, err := connect(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	logger.Info("Connected to QEMU's QMP monitor", "socket", cfg.QMPSocket, "greeting", string(conn.Greeting))

	for {
		ev, err := conn.NextEvent()
		if errors.Is(err, io.EOF) {
			logger.Info("QEMU closed the QMP monitor; exiting", "socket", cfg.QMPSocket)
			return nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			// QEMU died mid-message (SIGKILL, crash): it is gone all the same; what was recorded stands.
			logger.Warn("QEMU's QMP monitor closed abruptly; exiting", "socket", cfg.QMPSocket, "error", err.Error())
			return nil
		}
		if err != nil {
			return fmt.Errorf("read QMP events from %s: %w", cfg.QMPSocket, err)
		}
		if ev.Event != shutdown.EventShutdown {
			logger.Debug("QMP event", "event", ev.Event, "data", string(ev.Data))
			continue
		}
		var data qmp.ShutdownData
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.Reason == "" {
			logger.Error("Ignoring SHUTDOWN event without a reason", "data", string(ev.Data))
			continue
		}
		line := shutdown.Event{Event: shutdown.EventShutdown, Guest: data.Guest, Reason: data.Reason, Time: ev.Timestamp.Time()}
		logger.Info("QEMU SHUTDOWN event", "guest", data.Guest, "reason", data.Reason)
		written, err := cfg.Log.Append(line)
		if err != nil {
			return err
		}
		if !written {
			logger.Error("Termination log is full; dropping SHUTDOWN event", "limit", shutdown.MaxMessageBytes, "reason", data.Reason)
		}
	}
}

// connect retries until QEMU accepts on the socket and the handshake succeeds, or the timeout passes.
func connect(ctx context.Context, cfg MonitorConfig, logger *slog.Logger) (*qmp.Conn, error) {
	retry := cfg.RetryInterval
	if retry <= 0 {
		retry = 100 * time.Millisecond
	}
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	logger.Info("Waiting for QEMU's QMP socket", "socket", cfg.QMPSocket, "timeout", timeout.String())

	var lastErr error
	for {
		conn, err := qmp.Dial(ctx, cfg.QMPSocket, 10*time.Second)
		if err == nil {
			return conn, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, ErrStoppedBeforeQEMU
		case <-deadline.C:
			return nil, fmt.Errorf("QEMU's QMP socket %s was not usable within %s (did QEMU start, or did it exit "+
				"at once?): last error: %w", cfg.QMPSocket, timeout, lastErr)
		case <-time.After(retry):
		}
	}
}
