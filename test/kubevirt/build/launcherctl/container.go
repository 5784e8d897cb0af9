package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// containerSpec is one container view, written by the runner.
type containerSpec struct {
	Hostname string      `json:"hostname,omitempty"`
	Mounts   []mountSpec `json:"mounts"`
	// Dir is the working directory.
	Dir  string   `json:"dir,omitempty"`
	Env  []string `json:"env"`
	Args []string `json:"args"`
	// User, when set, is the non-root user the entrypoint runs as, through setpriv.
	User *userSpec `json:"user,omitempty"`
}

type userSpec struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
	// Caps are the capabilities kept (bounding, inheritable and ambient sets), e.g. "net_bind_service".
	Caps       []string `json:"caps,omitempty"`
	NoNewPrivs bool     `json:"noNewPrivs,omitempty"`
}

// mountSpec is one mount. Kind: bind (Source on Target, a file or a directory), tmpfs, proc, devpts, mqueue,
// overlay (Lower, highest first, read-only), symlink (Target -> Source), or char (a character device, Data
// "major:minor"). A missing Target is created, but only
// inside a scratch mount made earlier in the same spec, so that the host's own tree is never written.
type mountSpec struct {
	Kind     string   `json:"kind"`
	Source   string   `json:"source,omitempty"`
	Target   string   `json:"target"`
	ReadOnly bool     `json:"readOnly,omitempty"`
	Lower    []string `json:"lower,omitempty"`
	Data     string   `json:"data,omitempty"`
	// Scratch marks a mount (a volume of the pod) inside which missing mount points may be created, as the
	// container runtime creates them inside volumes; tmpfs mounts are always scratch.
	Scratch bool `json:"scratch,omitempty"`
}

func container(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: launcherctl container SPEC.json")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var spec containerSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	if len(spec.Args) == 0 {
		return errors.New("no entrypoint")
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	var scratch []string // targets of tmpfs mounts: missing mount points may be created below them
	for _, m := range spec.Mounts {
		parent, err := filepath.EvalSymlinks(filepath.Dir(m.Target))
		if err != nil {
			if err := createInside(filepath.Dir(m.Target), scratch, true); err != nil {
				return err
			}
			if parent, err = filepath.EvalSymlinks(filepath.Dir(m.Target)); err != nil {
				return err
			}
		}
		target := filepath.Join(parent, filepath.Base(m.Target))
		if m.Kind == "symlink" {
			if err := createInside(target, scratch, false); err != nil {
				return err
			}
			if err := os.Remove(target); err != nil {
				return err
			}
			if err := os.Symlink(m.Source, target); err != nil {
				return err
			}
			continue
		}
		isFile := m.Kind == "char"
		if m.Kind == "bind" {
			st, err := os.Stat(m.Source)
			if err != nil {
				return fmt.Errorf("bind source: %w", err)
			}
			isFile = !st.IsDir()
		}
		if _, err := os.Lstat(target); err != nil {
			if err := createInside(target, scratch, !isFile); err != nil {
				return err
			}
		}
		if err := mount(m, target); err != nil {
			return fmt.Errorf("mount %s %s: %w", m.Kind, m.Target, err)
		}
		if m.Kind == "tmpfs" || m.Scratch {
			scratch = append(scratch, target)
		}
	}
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	if spec.Dir != "" {
		if err := os.Chdir(spec.Dir); err != nil {
			return err
		}
	}
	argv := spec.Args
	if u := spec.User; u != nil {
		caps := "-all"
		for _, c := range u.Caps {
			caps += ",+" + c
		}
		priv := []string{"/usr/bin/setpriv", "--reuid", strconv.Itoa(u.UID), "--regid", strconv.Itoa(u.GID)}
		if len(u.Groups) == 0 {
			priv = append(priv, "--clear-groups")
		} else {
			var gs []string
			for _, g := range u.Groups {
				gs = append(gs, strconv.Itoa(g))
			}
			priv = append(priv, "--groups", strings.Join(gs, ","))
		}
		priv = append(priv, "--bounding-set", caps, "--inh-caps", caps, "--ambient-caps", caps)
		if u.NoNewPrivs {
			priv = append(priv, "--no-new-privs")
		}
		argv = append(append(priv, "--"), argv...)
	}
	return syscall.Exec(argv[0], argv, spec.Env)
}

// createInside creates path (a directory, or an empty file) if it lies below one of the scratch tmpfs targets.
func createInside(path string, scratch []string, dir bool) error {
	resolved := path
	// Resolve the longest existing prefix (e.g. /var/run -> /run).
	for p := path; p != "/" && p != "."; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			rel, _ := filepath.Rel(p, path)
			resolved = filepath.Join(r, rel)
			break
		}
	}
	inside := false
	for _, s := range scratch {
		if resolved == s || strings.HasPrefix(resolved, s+"/") {
			inside = true
		}
	}
	if !inside {
		return fmt.Errorf("mount point %s does not exist and is not inside a tmpfs of this container", path)
	}
	if dir {
		return os.MkdirAll(resolved, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(resolved), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(resolved, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func mount(m mountSpec, target string) error {
	switch m.Kind {
	case "bind":
		if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if m.ReadOnly {
			return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
		return nil
	case "tmpfs":
		data := m.Data
		if data == "" {
			data = "mode=755"
		}
		return unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID, data)
	case "proc":
		return unix.Mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	case "devpts":
		return unix.Mount("devpts", target, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
			"newinstance,ptmxmode=0666,mode=0620")
	case "char":
		// A character device node with the host's numbers (Data "major:minor"), as the runtime creates /dev/null & co.
		maj, min, ok := strings.Cut(m.Data, ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("bad device numbers %q", m.Data)
		}
		_ = os.Remove(target)
		if err := unix.Mknod(target, unix.S_IFCHR|0o666, int(unix.Mkdev(uint32(ma), uint32(mi)))); err != nil {
			return err
		}
		return os.Chmod(target, 0o666)
	case "mqueue":
		return unix.Mount("mqueue", target, "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	case "overlay":
		if len(m.Lower) < 2 {
			return errors.New("a read-only overlay needs two lower directories")
		}
		return unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(m.Lower, ":"))
	default:
		return fmt.Errorf("unknown mount kind %q", m.Kind)
	}
}
