// Command grain validates CUE policies, compiles them into the configuration
// of grain's generic eBPF programs and enforces them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/policies"
	"github.com/grain-ebpf/grain/schema"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `grain: a declarative eBPF policy engine

Usage:
  grain run --policies DIR [--interface IFACE]...   enforce policies, print events as JSON lines
  grain check DIR                                   validate policies (exit 1 on errors)
  grain compile [--interface IFACE]... DIR          print the compiled Plan as JSON
  grain version                                     print the version
  grain help policy                                 describe the policy schema
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "compile":
		return cmdCompile(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "grain", versionString())
		return 0
	case "help", "-h", "--help":
		if len(args) > 1 && args[1] == "policy" {
			fmt.Fprint(stdout, schema.Source)
			return 0
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "grain: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value[:min(12, len(s.Value))]
			}
		}
	}
	return "dev"
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// compileDir loads, validates and compiles a policy tree.
func compileDir(dir string, interfaces []string) (*policies.Snapshot, *codegen.Plan, error) {
	snap, err := policies.Load(dir)
	if err != nil {
		return nil, nil, err
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{Interfaces: interfaces})
	if err != nil {
		return nil, nil, err
	}
	return snap, plan, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: grain check DIR")
		return 2
	}
	snap, plan, err := compileDir(fs.Arg(0), nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d policies in %d files, %d packet rules: OK\n", fs.Arg(0), len(snap.Policies), len(snap.Files), len(plan.Rules))
	return 0
}

func cmdCompile(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ifaces stringList
	fs.Var(&ifaces, "interface", "attach to this interface instead of the policies' (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: grain compile [--interface IFACE] DIR")
		return 2
	}
	_, plan, err := compileDir(fs.Arg(0), ifaces)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	b, err := plan.JSON()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	stdout.Write(b)
	return 0
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("policies", "", "directory of .cue policy files")
	var ifaces stringList
	fs.Var(&ifaces, "interface", "attach to this interface instead of the policies' (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: grain run --policies DIR [--interface IFACE]...")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	_, plan, err := compileDir(*dir, ifaces)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if len(plan.Rules) == 0 {
		fmt.Fprintf(stderr, "grain: %s holds no packet policy: nothing to enforce\n", *dir)
		return 1
	}
	eng, err := engine.New(engine.Options{Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "grain:", err)
		return 1
	}
	defer eng.Close()
	if err := eng.Apply(plan); err != nil {
		fmt.Fprintln(stderr, "grain:", err)
		return 1
	}
	log.Info("enforcing", "policies", *dir, "rules", len(plan.Rules), "interfaces", strings.Join(eng.Interfaces(), ","))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := eng.StreamEvents(ctx, stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "grain:", err)
		return 1
	}
	log.Info("stopping: detaching")
	return 0
}
