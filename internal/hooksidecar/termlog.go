package hooksidecar

import (
	"fmt"
	"os"

	"github.com/runpolicy/runpolicy/internal/shutdown"
)

// TerminationLog appends SHUTDOWN events, one JSON line each, to the container's termination log. Every line is
// synced as it is written, so a later event (or the kubelet reading the file after a kill) never loses an earlier
// one. The file stays within the kubelet's limit (shutdown.MaxMessageBytes): an event that does not fit is dropped
// whole, so the first events — the ones that tell why the guest ended — are never truncated.
type TerminationLog struct {
	f    *os.File
	size int64
}

// OpenTerminationLog opens (creating if needed) the termination log for appending.
func OpenTerminationLog(path string) (*TerminationLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open termination log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("open termination log: %w", err)
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		size = 0 // e.g. /dev/null in a local run
	}
	return &TerminationLog{f: f, size: size}, nil
}

// Append writes ev as one line and syncs it. It reports false, without writing, when the line would take the file
// over shutdown.MaxMessageBytes.
func (t *TerminationLog) Append(ev shutdown.Event) (bool, error) {
	line := ev.Line()
	if t.size+int64(len(line)) > shutdown.MaxMessageBytes {
		return false, nil
	}
	n, err := t.f.Write(line)
	t.size += int64(n)
	if err != nil {
		return false, fmt.Errorf("write termination log: %w", err)
	}
	if err := t.f.Sync(); err != nil && t.f.Name() != os.DevNull {
		return true, fmt.Errorf("sync termination log: %w", err)
	}
	return true, nil
}

// Close closes the file.
func (t *TerminationLog) Close() error { return t.f.Close() }
