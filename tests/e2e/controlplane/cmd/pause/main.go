// Command pause is the pod sandbox's only process, as upstream's pause container: it holds
// the pod's namespaces open, reaps orphans (it is the sandbox's PID 1) and exits on SIGINT or
// SIGTERM. The e2e suite builds it static (no cgo) and wraps it in a local sandbox image,
// because no image registry is reachable from where the suite runs.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited; PID 1 inherits the pod's orphans.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
