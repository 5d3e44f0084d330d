package redistest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the shared redis-server when the test
// binary that started it exits, so no server outlives `go test`.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
