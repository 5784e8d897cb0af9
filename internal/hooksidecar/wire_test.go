package hooksidecar

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/info"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha2"
	"github.com/runpolicy/runpolicy/internal/hooksidecar/hookapi/v1alpha3"
)

// TestWireCompatibility pins what virt-launcher relies on in KubeVirt's hook protos (pkg/hooks/info,
// pkg/hooks/v1alpha2, pkg/hooks/v1alpha3): gRPC method paths, message names and field numbers. Editing a .proto
// in a way that breaks the wire fails here.
func TestWireCompatibility(t *testing.T) {
	methods := map[string]string{
		info.Info_Info_FullMethodName:                     "/kubevirt.hooks.info.Info/Info",
		v1alpha2.Callbacks_OnDefineDomain_FullMethodName:  "/kubevirt.hooks.v1alpha2.Callbacks/OnDefineDomain",
		v1alpha2.Callbacks_PreCloudInitIso_FullMethodName: "/kubevirt.hooks.v1alpha2.Callbacks/PreCloudInitIso",
		v1alpha3.Callbacks_OnDefineDomain_FullMethodName:  "/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain",
		v1alpha3.Callbacks_PreCloudInitIso_FullMethodName: "/kubevirt.hooks.v1alpha3.Callbacks/PreCloudInitIso",
		v1alpha3.Callbacks_Shutdown_FullMethodName:        "/kubevirt.hooks.v1alpha3.Callbacks/Shutdown",
	}
	for got, want := range methods {
		if got != want {
			t.Errorf("method %q, want %q", got, want)
		}
	}

	type field struct {
		number   protoreflect.FieldNumber
		kind     protoreflect.Kind
		repeated bool
	}
	messages := []struct {
		msg    protoreflect.MessageDescriptor
		name   protoreflect.FullName
		fields map[protoreflect.Name]field
	}{
		{(&info.InfoParams{}).ProtoReflect().Descriptor(), "kubevirt.hooks.info.InfoParams", nil},
		{(&info.InfoResult{}).ProtoReflect().Descriptor(), "kubevirt.hooks.info.InfoResult", map[protoreflect.Name]field{
			"name": {1, protoreflect.StringKind, false}, "hookPoints": {3, protoreflect.MessageKind, true},
			"versions": {4, protoreflect.StringKind, true},
		}},
		{(&info.HookPoint{}).ProtoReflect().Descriptor(), "kubevirt.hooks.info.HookPoint", map[protoreflect.Name]field{
			"name": {1, protoreflect.StringKind, false}, "priority": {2, protoreflect.Int32Kind, false},
		}},
		{(&v1alpha2.OnDefineDomainParams{}).ProtoReflect().Descriptor(), "kubevirt.hooks.v1alpha2.OnDefineDomainParams", map[protoreflect.Name]field{
			"domainXML": {1, protoreflect.BytesKind, false}, "vmi": {2, protoreflect.BytesKind, false},
		}},
		{(&v1alpha2.OnDefineDomainResult{}).ProtoReflect().Descriptor(), "kubevirt.hooks.v1alpha2.OnDefineDomainResult", map[protoreflect.Name]field{
			"domainXML": {1, protoreflect.BytesKind, false},
		}},
		{(&v1alpha3.OnDefineDomainParams{}).ProtoReflect().Descriptor(), "kubevirt.hooks.v1alpha3.OnDefineDomainParams", map[protoreflect.Name]field{
			"domainXML": {1, protoreflect.BytesKind, false}, "vmi": {2, protoreflect.BytesKind, false},
		}},
		{(&v1alpha3.OnDefineDomainResult{}).ProtoReflect().Descriptor(), "kubevirt.hooks.v1alpha3.OnDefineDomainResult", map[protoreflect.Name]field{
			"domainXML": {1, protoreflect.BytesKind, false},
		}},
	}
	for _, m := range messages {
		if m.msg.FullName() != m.name {
			t.Errorf("message %s, want %s", m.msg.FullName(), m.name)
		}
		if m.msg.Fields().Len() != len(m.fields) {
			t.Errorf("%s has %d fields, want %d", m.name, m.msg.Fields().Len(), len(m.fields))
		}
		for name, want := range m.fields {
			f := m.msg.Fields().ByName(name)
			if f == nil {
				t.Errorf("%s.%s missing", m.name, name)
				continue
			}
			if f.Number() != want.number || f.Kind() != want.kind || (f.Cardinality() == protoreflect.Repeated) != want.repeated {
				t.Errorf("%s.%s = #%d %v repeated=%v, want #%d %v repeated=%v", m.name, name,
					f.Number(), f.Kind(), f.Cardinality() == protoreflect.Repeated, want.number, want.kind, want.repeated)
			}
		}
	}
}
