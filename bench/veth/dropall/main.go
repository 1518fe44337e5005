// Command dropall attaches an XDP program that drops every packet to one
// interface and keeps it attached until SIGINT or SIGTERM. It is the floor of
// the veth benchmark (bench/veth/run.sh): the cost of having any XDP program
// on the receiving veth, without grain's parsing and matching. With -pass it
// attaches a program that passes every packet instead, which shows what XDP
// on a veth costs traffic that goes on to the stack. -hook picks native XDP
// (what grain uses), generic (skb) XDP or tcx ingress, to compare hooks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func main() {
	iface := flag.String("interface", "", "interface to attach to (in the current network namespace)")
	pass := flag.Bool("pass", false, "attach the program that passes every packet instead")
	hook := flag.String("hook", "xdp", "xdp (native), xdp-generic (skb mode) or tcx (tc ingress)")
	lifetime := flag.Duration("lifetime", 30*time.Minute, "detach and exit after this long even without a signal")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("dropall: ")
	if err := run(*iface, *hook, *pass, *lifetime); err != nil {
		log.Fatal(err)
	}
}

func run(iface, hook string, pass bool, lifetime time.Duration) error {
	if iface == "" {
		return errors.New("-interface is required")
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	var objs dropallObjects
	if err := loadDropallObjects(&objs, nil); err != nil {
		return fmt.Errorf("load XDP program: %w", err)
	}
	defer objs.Close()
	l, what, err := attach(&objs, ifc.Index, hook, pass)
	if err != nil {
		return fmt.Errorf("attach to %s: %w", iface, err)
	}
	defer l.Close()
	log.Printf("%s attached to %s (ifindex %d)", what, iface, ifc.Index)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, lifetime)
	defer cancel()
	<-ctx.Done()
	log.Printf("detaching from %s", iface)
	return nil
}

// attach puts the drop-all or pass-all program of the chosen hook on ifindex
// and says which one it attached.
func attach(objs *dropallObjects, ifindex int, hook string, pass bool) (link.Link, string, error) {
	verdict := "drop-all"
	if pass {
		verdict = "pass-all"
	}
	what := hook + " " + verdict
	switch hook {
	case "xdp", "xdp-generic":
		prog := objs.XdpDropAll
		if pass {
			prog = objs.XdpPassAll
		}
		// Native (driver) mode is what grain uses on veth; generic mode
		// runs the program on the skb in the core receive path.
		var flags link.XDPAttachFlags
		if hook == "xdp-generic" {
			flags = link.XDPGenericMode
		} else {
			flags = link.XDPDriverMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
		return l, what, err
	case "tcx":
		prog := objs.TcDropAll
		if pass {
			prog = objs.TcPassAll
		}
		l, err := link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
		return l, what, err
	}
	return nil, "", fmt.Errorf("-hook %q: want xdp, xdp-generic or tcx", hook)
}
