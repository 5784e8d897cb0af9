package qmp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU accepts one connection and plays script: lines starting with "<" are expected from the client (prefix
// match), "~" waits for the client to hang up, other lines are sent as they are.
func fakeQEMU(t *testing.T, script ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		defer func() { _ = l.Close() }()
		c, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer func() { _ = c.Close() }()
		r := bufio.NewReader(c)
		for _, step := range script {
			if step == "~" {
				_, _ = io.Copy(io.Discard, r)
				continue
			}
			if want, ok := strings.CutPrefix(step, "<"); ok {
				got, err := r.ReadString('\n')
				if err != nil || !strings.HasPrefix(got, want) {
					errc <- errors.New("fake QEMU got " + got + ", want " + want)
					return
				}
				continue
			}
			if _, err := io.WriteString(c, step+"\n"); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	t.Cleanup(func() {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	})
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`

func TestEventsAroundCommandsAreKeptInOrder(t *testing.T) {
	sock := fakeQEMU(t,
		greeting,
		`<{"execute":"qmp_capabilities"}`,
		`{"return": {}}`,
		`<{"execute":"cont"}`,
		`{"timestamp": {"seconds": 1795480542, "microseconds": 341899}, "event": "RESUME"}`,
		`{"return": {}}`,
		`{"timestamp": {"seconds": 1795480544, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}`,
	)
	c, err := Dial(context.Background(), sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if !strings.Contains(string(c.Greeting), `"major": 7`) {
		t.Errorf("greeting %s", c.Greeting)
	}
	if _, err := c.Execute("cont", nil); err != nil {
		t.Fatal(err)
	}
	ev, err := c.NextEvent()
	if err != nil || ev.Event != "RESUME" {
		t.Fatalf("first event %+v, %v; want the RESUME that came before cont's reply", ev, err)
	}
	ev, err = c.NextEvent()
	if err != nil || ev.Event != "SHUTDOWN" || !strings.Contains(string(ev.Data), "guest-reset") {
		t.Fatalf("second event %+v, %v", ev, err)
	}
	if want := time.Unix(1795480544, 5000); !ev.Timestamp.Time().Equal(want) {
		t.Errorf("time %v, want %v", ev.Timestamp.Time(), want)
	}
	if _, err := c.NextEvent(); !errors.Is(err, io.EOF) {
		t.Errorf("after QEMU closed: %v, want io.EOF", err)
	}
}

func TestCommandError(t *testing.T) {
	sock := fakeQEMU(t,
		greeting,
		`<{"execute":"qmp_capabilities"}`,
		`{"return": {}}`,
		`<{"arguments":{"x":1},"execute":"nope"}`,
		`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`,
	)
	c, err := Dial(context.Background(), sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_, err = c.Execute("nope", map[string]int{"x": 1})
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("error %v, want CommandNotFound", err)
	}
}

func TestHandshakeFailures(t *testing.T) {
	t.Run("no greeting", func(t *testing.T) {
		sock := fakeQEMU(t, `{"return": {}}`)
		if _, err := Dial(context.Background(), sock, 5*time.Second); err == nil || !strings.Contains(err.Error(), "greeting") {
			t.Errorf("error %v, want a greeting error", err)
		}
	})
	t.Run("closed before greeting", func(t *testing.T) {
		sock := fakeQEMU(t)
		if _, err := Dial(context.Background(), sock, 5*time.Second); err == nil || !strings.Contains(err.Error(), "read QMP greeting") {
			t.Errorf("error %v, want a greeting error", err)
		}
	})
	t.Run("silent", func(t *testing.T) {
		sock := fakeQEMU(t, "~")
		_, err := Dial(context.Background(), sock, 200*time.Millisecond)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("error %v, want a timeout", err)
		}
	})
	t.Run("no socket", func(t *testing.T) {
		if _, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none"), time.Second); err == nil {
			t.Error("no error")
		}
	})
}
