// Command kubectl-runpolicy is runpolicy's kubectl plugin: on the PATH, `kubectl runpolicy start|stop|restart
// NAME...` creates VirtualMachineOperations (and waits for them with --wait), `kubectl runpolicy status NAME`
// describes a VirtualMachine's power state. The commands are in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/runpolicy/runpolicy/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}
