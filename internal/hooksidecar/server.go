package hooksidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/info"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha2"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
)

const (
	// HookName is what Info reports as the sidecar's name.
	HookName = "runpolicy"
	// OnDefineDomainHookPoint is KubeVirt's hook point name (pkg/hooks/info: OnDefineDomainHookPointName).
	OnDefineDomainHookPoint = "OnDefineDomain"
	// VersionV1alpha2 and VersionV1alpha3 are the Callbacks versions served; virt-launcher picks the newest it knows.
	VersionV1alpha2 = "v1alpha2"
	VersionV1alpha3 = "v1alpha3"
)

// Hooks answers virt-launcher's hook calls.
type Hooks struct {
	// QMPSocket is the monitor socket path written into the domain (as QEMU in the compute container sees it).
	QMPSocket string
	Logger    *slog.Logger
}

func (h *Hooks) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

// OnDefineDomain mutates the domain XML; a malformed XML is an InvalidArgument error (virt-launcher then fails the
// VMI start rather than running a VM without the policy).
func (h *Hooks) OnDefineDomain(version string, domainXML []byte) ([]byte, error) {
	out, err := MutateDomain(domainXML, h.QMPSocket)
	if err != nil {
		h.logger().Error("OnDefineDomain failed", "version", version, "error", err.Error())
		return nil, status.Errorf(codes.InvalidArgument, "runpolicy hook sidecar: OnDefineDomain: %v", err)
	}
	h.logger().Info("OnDefineDomain: set on_reboot=destroy and added the QMP monitor", "version", version, "qmpSocket", h.QMPSocket)
	return out, nil
}

type infoServer struct {
	info.UnimplementedInfoServer
}

func (infoServer) Info(context.Context, *info.InfoParams) (*info.InfoResult, error) {
	return &info.InfoResult{
		Name:       HookName,
		HookPoints: []*info.HookPoint{{Name: OnDefineDomainHookPoint, Priority: 0}},
		Versions:   []string{VersionV1alpha3, VersionV1alpha2},
	}, nil
}

type v1alpha2Server struct {
	v1alpha2.UnimplementedCallbacksServer
	h *Hooks
}

func (s v1alpha2Server) OnDefineDomain(_ context.Context, p *v1alpha2.OnDefineDomainParams) (*v1alpha2.OnDefineDomainResult, error) {
	out, err := s.h.OnDefineDomain(VersionV1alpha2, p.GetDomainXML())
	if err != nil {
		return nil, err
	}
	return &v1alpha2.OnDefineDomainResult{DomainXML: out}, nil
}

type v1alpha3Server struct {
	v1alpha3.UnimplementedCallbacksServer
	h *Hooks
}

func (s v1alpha3Server) OnDefineDomain(_ context.Context, p *v1alpha3.OnDefineDomainParams) (*v1alpha3.OnDefineDomainResult, error) {
	out, err := s.h.OnDefineDomain(VersionV1alpha3, p.GetDomainXML())
	if err != nil {
		return nil, err
	}
	return &v1alpha3.OnDefineDomainResult{DomainXML: out}, nil
}

// NewGRPCServer returns a gRPC server with KubeVirt's Info service and the v1alpha2 and v1alpha3 Callbacks.
func NewGRPCServer(h *Hooks) *grpc.Server {
	s := grpc.NewServer()
	info.RegisterInfoServer(s, infoServer{})
	v1alpha2.RegisterCallbacksServer(s, v1alpha2Server{h: h})
	v1alpha3.RegisterCallbacksServer(s, v1alpha3Server{h: h})
	return s
}

// ListenUnix listens on the unix socket path, replacing a stale socket left by an earlier run.
func ListenUnix(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}
