package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat (100 on every Linux platform Go supports).
const clockTicks = 100

// cpuSeconds reads utime+stime of a process from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// memKiB reads VmHWM (peak RSS) from /proc/PID/status, in KiB.
func memKiB(pid int) (hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		if k == "VmHWM" {
			hwm = n
		}
	}
	return hwm, sc.Err()
}

// children maps the command name (comm) of this process's direct children to their pids: kube-apiserver,
// etcd, kube-controller-manager, virt-api and virt-controller are started by envtest / test/cluster as children of
// the bench.
func children() map[string][]int {
	out := map[string][]int{}
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, closeP := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closeP < open {
			continue
		}
		f := strings.Fields(s[closeP+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		out[s[open+1:closeP]] = append(out[s[open+1:closeP]], pid)
	}
	return out
}

// cpuSnapshot is the CPU time used so far by each component of the run.
type cpuSnapshot map[string]float64

// components whose CPU time is reported; "operator" is set by the caller.
func snapshot(operatorPID int) cpuSnapshot {
	s := cpuSnapshot{}
	if operatorPID > 0 {
		s["operator"], _ = cpuSeconds(operatorPID)
	}
	s["bench+node"], _ = cpuSeconds(os.Getpid())
	for name, pids := range children() {
		if strings.HasPrefix(name, "runpolicy") {
			continue
		}
		for _, p := range pids {
			c, _ := cpuSeconds(p)
			s[name] += c
		}
	}
	return s
}

func (s cpuSnapshot) since(prev cpuSnapshot) cpuSnapshot {
	d := cpuSnapshot{}
	for k, v := range s {
		d[k] = v - prev[k]
	}
	return d
}

func (s cpuSnapshot) String() string {
	var parts []string
	for _, k := range []string{"operator", "bench+node", "virt-api", "virt-controller", "kube-apiserver", "etcd", "kube-controller"} {
		if v, ok := s[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1fs", k, v))
		}
	}
	return strings.Join(parts, ", ")
}
