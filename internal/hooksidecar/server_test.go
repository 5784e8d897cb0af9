package hooksidecar

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/info"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha2"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// dialLikeVirtLauncher connects the way KubeVirt's pkg/util/net/grpc DialSocketWithTimeout does: insecure gRPC
// over the unix socket.
func dialLikeVirtLauncher(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func startServer(t *testing.T, h *Hooks) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "runpolicy.sock")
	l, err := ListenUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer(h)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return socket
}

// TestHookProtocol plays virt-launcher's hook manager: Info on the socket, pick the newest Callbacks version it
// supports (v1alpha3, then v1alpha2, as pkg/hooks/manager.go does), call OnDefineDomain with the domain XML.
func TestHookProtocol(t *testing.T) {
	logger, logs := testLogger(t)
	qmpSocket := "/var/run/kubevirt-hooks/hook-sidecar-0/runpolicy.qmp"
	socket := startServer(t, &Hooks{QMPSocket: qmpSocket, Logger: logger})
	conn := dialLikeVirtLauncher(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := info.NewInfoClient(conn).Info(ctx, &info.InfoParams{})
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if res.GetName() != HookName {
		t.Errorf("name = %q, want %q", res.GetName(), HookName)
	}
	if len(res.GetHookPoints()) != 1 || res.GetHookPoints()[0].GetName() != "OnDefineDomain" {
		t.Errorf("hook points = %v, want only OnDefineDomain", res.GetHookPoints())
	}
	if !slices.Contains(res.GetVersions(), "v1alpha3") || !slices.Contains(res.GetVersions(), "v1alpha2") {
		t.Errorf("versions = %q, want v1alpha3 and v1alpha2", res.GetVersions())
	}

	domain := []byte(`<domain type="kvm"><name>default_vm</name><on_reboot>restart</on_reboot></domain>`)
	want, err := MutateDomain(domain, qmpSocket)
	if err != nil {
		t.Fatal(err)
	}
	vmi := []byte(`{"kind":"VirtualMachineInstance"}`)

	r3, err := v1alpha3.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: domain, Vmi: vmi})
	if err != nil {
		t.Fatalf("v1alpha3 OnDefineDomain: %v", err)
	}
	if !bytes.Equal(r3.GetDomainXML(), want) {
		t.Errorf("v1alpha3 OnDefineDomain returned\n%s\nwant\n%s", r3.GetDomainXML(), want)
	}
	r2, err := v1alpha2.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha2.OnDefineDomainParams{DomainXML: domain, Vmi: vmi})
	if err != nil {
		t.Fatalf("v1alpha2 OnDefineDomain: %v", err)
	}
	if !bytes.Equal(r2.GetDomainXML(), want) {
		t.Errorf("v1alpha2 OnDefineDomain returned\n%s\nwant\n%s", r2.GetDomainXML(), want)
	}
	if !strings.Contains(logs.String(), "OnDefineDomain: set on_reboot=destroy") {
		t.Errorf("no log line for OnDefineDomain")
	}

	// A hook point the sidecar did not subscribe to is not implemented (virt-launcher never calls it).
	_, err = v1alpha3.NewCallbacksClient(conn).Shutdown(ctx, &v1alpha3.ShutdownParams{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Shutdown: %v, want Unimplemented", err)
	}
}

func TestHookProtocolMalformedDomain(t *testing.T) {
	logger, logs := testLogger(t)
	socket := startServer(t, &Hooks{QMPSocket: "/x/runpolicy.qmp", Logger: logger})
	conn := dialLikeVirtLauncher(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err := v1alpha3.NewCallbacksClient(conn).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: []byte("<domain><name>broken")})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("error %v, want InvalidArgument", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "OnDefineDomain") || !strings.Contains(msg, "parse domain XML") {
		t.Errorf("message %q does not explain the failure", msg)
	}
	if !strings.Contains(logs.String(), `"msg":"OnDefineDomain failed"`) {
		t.Errorf("no error log line, log:\n%s", logs.String())
	}
}
