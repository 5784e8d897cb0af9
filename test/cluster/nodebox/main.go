// Command nodebox is the test node's one small program, built into two images with the project's image library
// (package images), since no registry is reachable here:
//
//   - the pod sandbox image (containerd's sandbox_image, what `registry.k8s.io/pause` is on a cluster): with no
//     arguments it holds the pod's namespaces until SIGTERM or SIGINT, reaping the zombies it inherits;
//   - a client pod's image: `nodebox fetch URL [PREFIX]` GETs URL with the pod's ServiceAccount token (the way
//     Prometheus scrapes an endpoint that authorizes its callers) and writes the status line and the body's lines
//     that start with PREFIX (all of them without one), cut to 3,000 bytes, to its termination log, which the kubelet publishes in the pod's status. It exits 0 on HTTP 200, 1 otherwise.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	tokenFile      = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	terminationLog = "/dev/termination-log"
	// maxMessage keeps the termination message under the kubelet's 4,096-byte limit.
	maxMessage = 3000
)

func main() {
	if (len(os.Args) == 3 || len(os.Args) == 4) && os.Args[1] == "fetch" {
		prefix := ""
		if len(os.Args) == 4 {
			prefix = os.Args[3]
		}
		os.Exit(fetch(os.Args[2], prefix))
	}
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: nodebox (hold a pod's namespaces) | nodebox fetch URL [PREFIX]")
		os.Exit(2)
	}
	pause()
}

func pause() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			return
		case <-children:
			for {
				var ws syscall.WaitStatus
				if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}

func fetch(url, prefix string) int {
	msg, ok := get(url, prefix)
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	fmt.Println(msg)
	if err := os.WriteFile(terminationLog, []byte(msg), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "termination log:", err)
	}
	if !ok {
		return 1
	}
	return 0
}

func get(url, prefix string) (string, bool) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err.Error(), false
	}
	if token, err := os.ReadFile(tokenFile); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	// The operator's metrics endpoint serves a self-signed certificate, as the chart deploys it.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test client of a self-signed endpoint
	resp, err := c.Do(req)
	if err != nil {
		return err.Error(), false
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	lines := []string{resp.Status}
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, prefix) {
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}
	return strings.Join(lines, "\n"), resp.StatusCode == http.StatusOK
}
