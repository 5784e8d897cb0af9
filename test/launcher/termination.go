package launcher

import (
	"bytes"
	"errors"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
)

// The kubelet's limits (pkg/kubelet/container/runtime.go).
const (
	// maxTerminationMessageLength is how much of the termination message file the kubelet reads: its last 4 KiB.
	maxTerminationMessageLength = 4 * 1024
	// maxTerminationMessageLogLines and maxTerminationMessageLogLength bound the log tail used by
	// FallbackToLogsOnError.
	maxTerminationMessageLogLines  = 80
	maxTerminationMessageLogLength = 2 * 1024
)

// terminatedState is the kubelet's terminated state of an exited container (pkg/kubelet/kuberuntime
// getTerminationMessage and toKubeContainerStatus): the reason the runtime gives (Completed or Error), and the
// message: the last 4 KiB of the termination message file; with FallbackToLogsOnError, when the file is missing
// or empty and the container failed, the last 80 lines (at most 2 KiB) of its log instead.
func terminatedState(exitCode int32, messageFile, logFile string, policy corev1.TerminationMessagePolicy) corev1.ContainerStateTerminated {
	st := corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: "Completed"}
	if exitCode != 0 {
		st.Reason = "Error"
	}
	fallback := policy == corev1.TerminationMessageFallbackToLogsOnError && exitCode != 0
	msg, err := readLast(messageFile, maxTerminationMessageLength)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		st.Message = "Error on reading termination log " + messageFile + ": " + err.Error()
		return st
	default:
		st.Message = string(msg)
	}
	if fallback && len(msg) == 0 {
		st.Message = string(logTail(logFile, maxTerminationMessageLogLines, maxTerminationMessageLogLength))
	}
	return st
}

// readLast returns the last max bytes of a file (the kubelet's tail.ReadAtMost).
func readLast(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		if _, err := f.Seek(st.Size()-max, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(f)
}

// logTail returns the last lines of a log, at most max bytes (the kubelet's readLastStringFromContainerLogs:
// tail by lines, then a circular buffer of max bytes).
func logTail(path string, lines int, max int) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	all := bytes.SplitAfter(b, []byte("\n"))
	if len(all) > 0 && len(all[len(all)-1]) == 0 {
		all = all[:len(all)-1]
	}
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	out := bytes.Join(all, nil)
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
}
