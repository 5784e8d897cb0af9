package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// prompt is the tiny guest's shell prompt (busybox ash as root in /).
const prompt = "/ # "

// console is `virtctl console` of one VMI, as a user runs it: virt-api's console subresource, which virt-handler
// serves from the launcher pod's serial socket.
type console struct {
	virtctl, kubeconfig, namespace, name string
}

// typeLine connects, presses Enter every 2 s until the guest's shell prompts (the guest may still be booting: the
// console shows what it prints from the connection on), types line and returns what the guest printed back (see the
// package documentation).
func (c console) typeLine(ctx context.Context, line string) (string, error) {
	cmd := exec.CommandContext(ctx, c.virtctl, "console", c.name, "--namespace", c.namespace, "--kubeconfig", c.kubeconfig)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	var out, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan struct{}) // closed once virtctl exited, with waitErr
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		_ = stdin.Close() // virtctl leaves the console at the end of its input
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	failed := func(what string, err error) (string, error) {
		return "", fmt.Errorf("%s/%s: %s: %w; virtctl: %s; console: %q", c.namespace, c.name, what, err,
			strings.TrimSpace(stderr.String()), tail(clean(out.String()), 512))
	}

	enter := time.NewTicker(2 * time.Second)
	defer enter.Stop()
	for !strings.Contains(clean(out.String()), prompt) {
		select {
		case <-enter.C:
			if _, err := stdin.Write([]byte("\n")); err != nil {
				return failed("pressing Enter", err)
			}
		case <-exited:
			return failed("the console closed before the shell prompted", waitErr)
		case <-ctx.Done():
			return failed("no shell prompt", ctx.Err())
		}
	}
	// The shell answers an Enter at once; let a last one's prompt arrive before typing.
	for n := -1; n != out.Len(); {
		n = out.Len()
		select {
		case <-exited:
			return failed("the console closed", waitErr)
		case <-time.After(time.Second):
		}
	}
	mark := out.Len()
	if _, err := stdin.Write([]byte(line + "\n")); err != nil {
		return failed("typing", err)
	}
	for {
		raw := clean(out.String()[mark:])
		got := dropEcho(raw, line)
		if rest, ok := strings.CutSuffix(got, prompt); ok && got != raw {
			return rest, nil // the shell prompts again
		}
		select {
		case <-exited:
			return dropEcho(clean(out.String()[mark:]), line), nil // the console closed: QEMU ended
		case <-ctx.Done():
			return failed("no answer", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lockedBuffer is a bytes.Buffer that one goroutine writes (virtctl's output) while another reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// csi matches the terminal control sequences the guest's line editor writes (it asks for the cursor position).
var csi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

func clean(s string) string { return strings.ReplaceAll(csi.ReplaceAllString(s, ""), "\r", "") }

// dropEcho removes the terminal's echo of line from the start of out (the line editor wraps long lines), with its
// newline; out is returned as it is while the echo is incomplete.
func dropEcho(out, line string) string {
	i := 0
	for j := 0; j < len(line); j++ {
		for i < len(out) && out[i] == '\n' && line[j] != '\n' {
			i++
		}
		if i >= len(out) || out[i] != line[j] {
			return out
		}
		i++
	}
	if i >= len(out) || out[i] != '\n' {
		return out
	}
	return out[i+1:]
}
