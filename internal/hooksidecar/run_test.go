package hooksidecar

import (
	"strings"
	"testing"
)

// TestConfigQMPSockets pins the two views of the QMP socket: the sidecar dials it in its own hooks directory (the
// emptyDir's subPath $CONTAINER_NAME), the domain names it as the compute container sees it, one directory down.
// Without a usable container name there is no right path, so it is an error that names CONTAINER_NAME.
func TestConfigQMPSockets(t *testing.T) {
	pod := Config{HooksDir: DefaultHooksDir, ComputeHooksDir: DefaultHooksDir, ContainerName: "hook-sidecar-0", QMPSocketName: "runpolicy.qmp"}
	with := func(change func(*Config)) Config {
		c := pod
		change(&c)
		return c
	}
	tests := []struct {
		name                   string
		cfg                    Config
		wantLocal, wantCompute string
		wantErr                string
	}{
		{name: "launcher pod", cfg: pod,
			wantLocal: "/var/run/kubevirt-hooks/runpolicy.qmp", wantCompute: "/var/run/kubevirt-hooks/hook-sidecar-0/runpolicy.qmp"},
		{name: "second sidecar", cfg: with(func(c *Config) { c.ContainerName = "hook-sidecar-1" }),
			wantLocal: "/var/run/kubevirt-hooks/runpolicy.qmp", wantCompute: "/var/run/kubevirt-hooks/hook-sidecar-1/runpolicy.qmp"},
		{name: "other directories", cfg: with(func(c *Config) { c.HooksDir, c.ComputeHooksDir = "/hooks", "/compute/hooks" }),
			wantLocal: "/hooks/runpolicy.qmp", wantCompute: "/compute/hooks/hook-sidecar-0/runpolicy.qmp"},
		{name: "no container name", cfg: with(func(c *Config) { c.ContainerName = "" }), wantErr: "CONTAINER_NAME is not set"},
		{name: "path in container name", cfg: with(func(c *Config) { c.ContainerName = "../hook-sidecar-0" }),
			wantErr: `CONTAINER_NAME="../hook-sidecar-0" is not a container name`},
		{name: "dot container name", cfg: with(func(c *Config) { c.ContainerName = ".." }), wantErr: `CONTAINER_NAME=".." is not a container name`},
		{name: "relative compute directory", cfg: with(func(c *Config) { c.ComputeHooksDir = "kubevirt-hooks" }),
			wantErr: "not an absolute path"},
		{name: "no hooks directory", cfg: with(func(c *Config) { c.HooksDir = "" }), wantErr: "no hooks directory"},
		{name: "socket name with a directory", cfg: with(func(c *Config) { c.QMPSocketName = "x/runpolicy.qmp" }),
			wantErr: "not a file name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, compute, err := tt.cfg.QMPSockets()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if local != tt.wantLocal || compute != tt.wantCompute {
				t.Errorf("QMPSockets() = %q, %q; want %q, %q", local, compute, tt.wantLocal, tt.wantCompute)
			}
		})
	}
}
