package hooksidecar

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.xml from the current output")

// testQMPSocket is the path the domain names in a launcher pod: the compute container's view (Config.QMPSockets).
const testQMPSocket = "/var/run/kubevirt-hooks/hook-sidecar-0/runpolicy.qmp"

func TestMutateDomainGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.input.xml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no testdata inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.xml")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := MutateDomain(src, testQMPSocket)
			if err != nil {
				t.Fatalf("MutateDomain: %v", err)
			}
			golden := filepath.Join("testdata", name+".golden.xml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestMutateDomainGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (rerun with -update if intended):\n%s", golden, got)
			}
		})
	}
}

// TestMutateDomainSemantics checks what the golden files show, field by field: on_reboot, exactly one monitor with
// the right arguments, foreign arguments and env kept, and nothing else in the domain changed.
func TestMutateDomainSemantics(t *testing.T) {
	for _, in := range []string{"testdata/kubevirt.input.xml", "testdata/minimal.input.xml"} {
		t.Run(filepath.Base(in), func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			out, err := MutateDomain(src, testQMPSocket)
			if err != nil {
				t.Fatal(err)
			}
			var before, after libvirtxml.Domain
			if err := before.Unmarshal(string(src)); err != nil {
				t.Fatal(err)
			}
			if err := after.Unmarshal(string(out)); err != nil {
				t.Fatalf("output is not a valid domain: %v", err)
			}
			if after.OnReboot != "destroy" {
				t.Errorf("on_reboot = %q, want destroy", after.OnReboot)
			}
			args, err := QEMUCommandlineArgs(out)
			if err != nil {
				t.Fatal(err)
			}
			ours := QMPArgs(testQMPSocket)
			if n := countSub(args, ours); n != 1 {
				t.Errorf("monitor arguments appear %d times in %q, want once", n, args)
			}
			var foreign []string
			if before.QEMUCommandline != nil {
				for _, a := range removeOurArgs(before.QEMUCommandline.Args) {
					foreign = append(foreign, a.Value)
				}
			}
			if got := slices.Concat(foreign, ours); !slices.Equal(args, got) {
				t.Errorf("qemu:commandline args = %q, want %q", args, got)
			}
			if before.QEMUCommandline != nil && !slices.Equal(before.QEMUCommandline.Envs, after.QEMUCommandline.Envs) {
				t.Errorf("qemu:commandline env changed: %v -> %v", before.QEMUCommandline.Envs, after.QEMUCommandline.Envs)
			}
			// Everything else is untouched: undo our two changes and compare the whole documents.
			after.OnReboot = before.OnReboot
			after.QEMUCommandline, before.QEMUCommandline = nil, nil
			b, _ := before.Marshal()
			a, _ := after.Marshal()
			if a != b {
				t.Errorf("unrelated parts of the domain changed:\nbefore:\n%s\nafter:\n%s", b, a)
			}
		})
	}
}

func TestMutateDomainIsIdempotent(t *testing.T) {
	src, err := os.ReadFile("testdata/kubevirt.input.xml")
	if err != nil {
		t.Fatal(err)
	}
	once, err := MutateDomain(src, testQMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	twice, err := MutateDomain(once, testQMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(once, twice) {
		t.Errorf("applying the hook twice changed the domain:\nonce:\n%s\ntwice:\n%s", once, twice)
	}
	args, _ := QEMUCommandlineArgs(twice)
	if n := strings.Count(strings.Join(args, " "), "id="+QMPChardevID); n != 1 {
		t.Errorf("%d monitors after two applications, want 1: %q", n, args)
	}
}

func TestMutateDomainRejectsMalformedXML(t *testing.T) {
	for name, in := range map[string]string{
		"empty":        "",
		"truncated":    "<domain type='kvm'><name>x</name><devices>",
		"not a domain": "<network><name>default</name></network>",
		"garbage":      "this is not xml",
	} {
		t.Run(name, func(t *testing.T) {
			out, err := MutateDomain([]byte(in), testQMPSocket)
			if err == nil {
				t.Fatalf("no error, output:\n%s", out)
			}
			if !strings.Contains(err.Error(), "domain XML") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

func TestQMPArgs(t *testing.T) {
	tests := []struct {
		path string
		want []string
	}{
		{"/var/run/kubevirt-hooks/hook-sidecar-0/runpolicy.qmp", []string{
			"-chardev", "socket,id=runpolicy-qmp,path=/var/run/kubevirt-hooks/hook-sidecar-0/runpolicy.qmp,server=on,wait=off",
			"-mon", "chardev=runpolicy-qmp,mode=control",
		}},
		{"/tmp/a,b.qmp", []string{
			"-chardev", "socket,id=runpolicy-qmp,path=/tmp/a,,b.qmp,server=on,wait=off",
			"-mon", "chardev=runpolicy-qmp,mode=control",
		}},
	}
	for _, tt := range tests {
		if got := QMPArgs(tt.path); !slices.Equal(got, tt.want) {
			t.Errorf("QMPArgs(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

// countSub counts the non-overlapping occurrences of sub in s.
func countSub(s, sub []string) int {
	n := 0
	for i := 0; i+len(sub) <= len(s); {
		if slices.Equal(s[i:i+len(sub)], sub) {
			n++
			i += len(sub)
			continue
		}
		i++
	}
	return n
}
