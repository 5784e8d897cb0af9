// Package qmp is a minimal client for QEMU's machine protocol (QMP) over a unix socket: connect, negotiate
// capabilities, execute commands and read asynchronous events. Standard library only.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Timestamp is QMP's event timestamp.
type Timestamp struct {
	Seconds      int64 `json:"seconds"`
	Microseconds int64 `json:"microseconds"`
}

// Time converts the timestamp to a UTC time.
func (t Timestamp) Time() time.Time {
	return time.Unix(t.Seconds, t.Microseconds*1000).UTC()
}

// Event is an asynchronous QMP event.
type Event struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp Timestamp       `json:"timestamp"`
}

// ShutdownData is the data of a SHUTDOWN event (qapi/run-state.json).
type ShutdownData struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// Error is an error reply to a command.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("QMP error %s: %s", e.Class, e.Desc) }

// message is any line QEMU sends: the greeting, a command reply or an event.
type message struct {
	QMP       json.RawMessage `json:"QMP,omitempty"`
	Return    json.RawMessage `json:"return,omitempty"`
	Error     *Error          `json:"error,omitempty"`
	Event     string          `json:"event,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp Timestamp       `json:"timestamp"`
}

// Conn is a negotiated QMP connection. It is not safe for concurrent use.
type Conn struct {
	conn    net.Conn
	dec     *json.Decoder
	pending []Event // events read while waiting for a command reply
	// Greeting is QEMU's greeting ({"QMP": {"version": ..., "capabilities": ...}}), raw.
	Greeting json.RawMessage
}

// Dial connects to the QMP socket at path once, reads the greeting and negotiates capabilities
// (qmp_capabilities). The handshake must finish within handshakeTimeout.
func Dial(ctx context.Context, path string, handshakeTimeout time.Duration) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	c := &Conn{conn: nc, dec: json.NewDecoder(bufio.NewReader(nc))}
	if err := c.handshake(handshakeTimeout); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) handshake(timeout time.Duration) error {
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = c.conn.SetDeadline(time.Time{}) }()
	var greeting message
	if err := c.dec.Decode(&greeting); err != nil {
		return fmt.Errorf("read QMP greeting: %w", err)
	}
	if greeting.QMP == nil {
		return fmt.Errorf("unexpected first QMP message (no greeting)")
	}
	c.Greeting = greeting.QMP
	if _, err := c.Execute("qmp_capabilities", nil); err != nil {
		return fmt.Errorf("negotiate QMP capabilities: %w", err)
	}
	return nil
}

// Execute runs a command and returns its raw "return" value. Events that arrive before the reply are kept and
// returned by later NextEvent calls, so none is lost.
func (c *Conn) Execute(command string, arguments any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if arguments != nil {
		req["arguments"] = arguments
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("send %s: %w", command, err)
	}
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("read reply to %s: %w", command, err)
		}
		switch {
		case m.Event != "":
			c.pending = append(c.pending, Event{Event: m.Event, Data: m.Data, Timestamp: m.Timestamp})
		case m.Error != nil:
			return nil, m.Error
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

// NextEvent blocks until QEMU sends an event. When QEMU closes the monitor (it exited), the error is io.EOF.
func (c *Conn) NextEvent() (Event, error) {
	if len(c.pending) > 0 {
		ev := c.pending[0]
		c.pending = c.pending[1:]
		return ev, nil
	}
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			if errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("QMP connection closed: %w", err)
			}
			return Event{}, err
		}
		if m.Event != "" {
			return Event{Event: m.Event, Data: m.Data, Timestamp: m.Timestamp}, nil
		}
		// A stray reply (no command is in flight) is ignored.
	}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }
