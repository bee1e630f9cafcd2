package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/container"
)

// The control socket takes one request line and answers one line: "ok" or
// "error: WHY". Requests: "restart NAME" and "down".
func (s *Supervisor) serveControl(ctx context.Context, services []*service, down context.CancelFunc) (func(), error) {
	path := controlSocket(s.Dir)
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	byName := map[string]*service{}
	for _, sv := range services {
		byName[sv.def.Name] = sv
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintln(c, s.handle(strings.Fields(line), byName, down))
			}()
		}
	}()
	return func() { ln.Close(); os.Remove(path) }, nil
}

func (s *Supervisor) handle(req []string, byName map[string]*service, down context.CancelFunc) string {
	switch {
	case len(req) == 1 && req[0] == "down":
		s.logf("down requested")
		down()
		return "ok"
	case len(req) == 2 && req[0] == "restart":
		sv, ok := byName[req[1]]
		if !ok {
			var names []string
			for n := range byName {
				names = append(names, n)
			}
			return fmt.Sprintf("error: no service %q (services: %s)", req[1], strings.Join(names, ", "))
		}
		select {
		case sv.restart <- struct{}{}:
		default: // one is already pending
		}
		s.logf("restart of %s requested", req[1])
		return "ok"
	}
	return fmt.Sprintf("error: unknown request %q", strings.Join(req, " "))
}

func request(dir, req string) error {
	c, err := net.DialTimeout("unix", controlSocket(dir), 5*time.Second)
	if err != nil {
		if _, rerr := Running(dir); rerr != nil {
			return rerr
		}
		return fmt.Errorf("reach the supervisor: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, req); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("supervisor did not answer: %w", err)
	}
	line = strings.TrimSpace(line)
	if line != "ok" {
		return errors.New(strings.TrimPrefix(line, "error: "))
	}
	return nil
}

// Restart asks the running supervisor to restart service name (with a
// fresh root filesystem). It returns once the request is accepted.
func Restart(dir, name string) error { return request(dir, "restart "+name) }

// Down stops the running supervisor and waits (up to timeout) until every
// service is stopped and unmounted. With no supervisor running, it cleans
// up what a crashed one left, using l.
func Down(ctx context.Context, dir string, l *container.Launcher, timeout time.Duration) ([]string, error) {
	info, err := Running(dir)
	if err != nil {
		if !errors.Is(err, ErrNotRunning) {
			return nil, err
		}
		unlock, lerr := Lock(dir)
		if lerr != nil {
			return nil, lerr
		}
		defer unlock()
		return Recover(ctx, dir, l)
	}
	if err := request(dir, "down"); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for info.Owner.Alive() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("supervisor (pid %d) still stopping after %s", info.Owner.Pid, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, nil
}
