package launcher

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	kvv1 "kubevirt.io/api/core/v1"
)

func TestTerminatedState(t *testing.T) {
	long := strings.Repeat("x", 5000) + "END"
	var logLines []string
	for i := 0; i < 100; i++ {
		logLines = append(logLines, fmt.Sprintf("log line %03d", i))
	}
	fullLog := strings.Join(logLines, "\n") + "\n"
	const fallback = corev1.TerminationMessageFallbackToLogsOnError
	const file = corev1.TerminationMessageReadFile
	for _, tc := range []struct {
		name        string
		code        int32
		message     *string // nil: no file
		log         string
		policy      corev1.TerminationMessagePolicy
		wantReason  string
		wantMessage string
	}{
		{name: "message of a success", code: 0, message: ptr("done\n"), log: "noise\n", policy: fallback,
			wantReason: "Completed", wantMessage: "done\n"},
		{name: "empty message of a success: no fallback", code: 0, message: ptr(""), log: "noise\n", policy: fallback,
			wantReason: "Completed", wantMessage: ""},
		{name: "empty message of a failure: log tail", code: 1, message: ptr(""), log: "boom\n", policy: fallback,
			wantReason: "Error", wantMessage: "boom\n"},
		{name: "missing file of a failure: log tail", code: 2, message: nil, log: "boom\n", policy: fallback,
			wantReason: "Error", wantMessage: "boom\n"},
		{name: "message of a failure wins over the log", code: 1, message: ptr("why\n"), log: "boom\n", policy: fallback,
			wantReason: "Error", wantMessage: "why\n"},
		{name: "File policy never reads the log", code: 1, message: ptr(""), log: "boom\n", policy: file,
			wantReason: "Error", wantMessage: ""},
		{name: "the last 4 KiB of a long message", code: 0, message: &long, policy: fallback,
			wantReason: "Completed", wantMessage: long[len(long)-4096:]},
		{name: "the last 80 lines of the log", code: 1, message: ptr(""), log: fullLog, policy: fallback,
			wantReason: "Error", wantMessage: strings.Join(logLines[20:], "\n") + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			msgPath, logPath := filepath.Join(dir, "termination-log"), filepath.Join(dir, "log")
			if tc.message != nil {
				if err := os.WriteFile(msgPath, []byte(*tc.message), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(logPath, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			got := terminatedState(tc.code, msgPath, logPath, tc.policy)
			if got.ExitCode != tc.code || got.Reason != tc.wantReason || got.Message != tc.wantMessage {
				t.Errorf("got exit %d reason %q message %q (%d bytes), want exit %d reason %q message %q (%d bytes)",
					got.ExitCode, got.Reason, trunc(got.Message), len(got.Message), tc.code, tc.wantReason,
					trunc(tc.wantMessage), len(tc.wantMessage))
			}
		})
	}
}

func TestLogTailCapsBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	line := strings.Repeat("y", 100) + "\n"
	if err := os.WriteFile(path, []byte(strings.Repeat(line, 50)), 0o644); err != nil {
		t.Fatal(err)
	}
	got := logTail(path, maxTerminationMessageLogLines, maxTerminationMessageLogLength)
	if len(got) != maxTerminationMessageLogLength || !strings.HasSuffix(string(got), line) {
		t.Errorf("got %d bytes, want the last %d bytes of the log", len(got), maxTerminationMessageLogLength)
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two"}
	got := expand([]string{"$(A)", "x$(B)y", "$$(A)", "$(C)", "$", "a$(A"}, vars)
	want := []string{"1", "xtwoy", "$(A)", "$(C)", "$", "a$(A"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("expand = %q, want %q", got, want)
	}
}

func ptr(s string) *string { return &s }

func trunc(s string) string {
	if len(s) > 40 {
		return s[:20] + "…" + s[len(s)-20:]
	}
	return s
}

func TestPhase(t *testing.T) {
	for _, tc := range []struct {
		status, reason string
		acpi           bool
		want           kvv1.VirtualMachineInstancePhase
	}{
		{"Running", "Unknown", true, kvv1.Running},
		{"Paused", "StartingUp", true, kvv1.Running},
		{"Paused", "PausedPostcopyFailed", true, kvv1.Failed},
		{"Shutoff", "Shutdown", true, kvv1.Succeeded},
		{"Shutoff", "Destroyed", true, kvv1.Failed},
		{"Shutoff", "Destroyed", false, kvv1.Succeeded},
		{"Crashed", "Crashed", true, kvv1.Failed},
		{"Shutoff", "Migrated", true, kvv1.Scheduled},
		{"NoState", "Unknown", true, kvv1.Scheduled},
	} {
		got := Phase(&Domain{Status: tc.status, Reason: tc.reason, ACPI: tc.acpi}, kvv1.Scheduled)
		if got != tc.want {
			t.Errorf("Phase(%s/%s, acpi=%t) = %s, want %s", tc.status, tc.reason, tc.acpi, got, tc.want)
		}
	}
}
