#!/bin/sh
# libvirt.sh start|stop|status — run a system-mode libvirtd as root without systemd, for the libvirt test tier.
#
# start: creates the libvirt-qemu user/group libvirtd insists on (normally made by libvirt-daemon-system, which
#        pulls in systemd), writes a minimal /etc/libvirt/qemu.conf (QEMU as root, no security driver, no cgroups,
#        no namespaces; an existing different file is kept as qemu.conf.runpolicy-orig), starts `libvirtd -d` and
#        waits until virsh answers (the first call probes QEMU's capabilities, about 8 s). Prints "started" or
#        "already running". Idempotent.
# stop:  stops the libvirtd this script started (by the PID in its pid file).
# Needs the packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients (test/guest/setup.sh installs them).
set -eu

state=${RUNPOLICY_LIBVIRT_STATE:-/run/runpolicy-libvirt}
pidfile=$state/libvirtd.pid
uri=qemu:///system

running() {
	[ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

case "${1:-}" in
start)
	if [ "$(id -u)" != 0 ]; then
		echo "libvirt.sh: must run as root" >&2
		exit 1
	fi
	if running; then
		echo "already running"
		exit 0
	fi
	getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
	getent passwd libvirt-qemu >/dev/null ||
		useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
	mkdir -p "$state" /etc/libvirt
	conf=$(mktemp)
	cat >"$conf" <<'CONF'
# Written by runpolicy test/guest/libvirt.sh: QEMU as root, without a security driver, cgroups or namespaces
# (no systemd in the test machine).
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
CONF
	if [ -f /etc/libvirt/qemu.conf ] && ! cmp -s "$conf" /etc/libvirt/qemu.conf &&
		[ ! -f /etc/libvirt/qemu.conf.runpolicy-orig ]; then
		cp /etc/libvirt/qemu.conf /etc/libvirt/qemu.conf.runpolicy-orig
	fi
	mv "$conf" /etc/libvirt/qemu.conf
	chmod 0644 /etc/libvirt/qemu.conf
	cat >"$state/libvirtd.conf" <<CONF
log_outputs = "3:file:$state/libvirtd.log"
CONF
	libvirtd -d -f "$state/libvirtd.conf" -p "$pidfile"
	i=0
	until virsh -q -c "$uri" version >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -ge 120 ] || ! running; then
			echo "libvirt.sh: libvirtd did not come up; see $state/libvirtd.log" >&2
			exit 1
		fi
		sleep 0.5
	done
	echo "started"
	;;
stop)
	if ! running; then
		rm -f "$pidfile"
		exit 0
	fi
	pid=$(cat "$pidfile")
	kill "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		if [ "$i" -ge 100 ]; then
			kill -9 "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	rm -f "$pidfile"
	;;
status)
	if running; then echo running; else echo stopped; fi
	;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
