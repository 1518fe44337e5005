package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/plandiff"
	"github.com/grain-ebpf/grain/policies"
)

const diffUsage = "usage: grain diff [--pcap FILE] [--interface IFACE] [--format text|markdown] OLD NEW  (directories, or git revisions REV or REV:PATH)"

// cmdDiff compares two policy trees, like diff: exit 0 when nothing
// changed, 1 when something did, 2 on an error.
func cmdDiff(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("diff", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pcapFile := fs.String("pcap", "", "replay the frames of this pcap file through both trees and report every change of verdict or deciding policy")
	iface := fs.String("interface", "", "the interface the replayed frames arrive on (default: the new tree's first)")
	format := fs.String("format", "text", "output: text, or markdown for a pull-request comment")
	limits := evalFlags(fs)
	if err := fs.Parse(args); err != nil || !checkLimits(limits, stderr) {
		return 2
	}
	if fs.NArg() != 2 || (*format != "text" && *format != "markdown") {
		fmt.Fprintln(stderr, diffUsage)
		return 2
	}
	tmp, err := os.MkdirTemp("", "grain-diff-")
	if err != nil {
		fmt.Fprintln(stderr, "grain diff:", err)
		return 2
	}
	defer os.RemoveAll(tmp)
	// Both trees load at once, each in a worker of its own.
	var trees [2]plandiff.Tree
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, arg := range fs.Args() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			trees[i], errs[i] = loadTree(arg, tmp, *limits)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			fmt.Fprintln(stderr, "grain diff:", err)
			return 2
		}
	}
	d := plandiff.Compare(trees[0], trees[1])
	if *pcapFile != "" {
		in := *iface
		for _, t := range []plandiff.Tree{trees[1], trees[0]} {
			if in == "" && len(t.Plan.Attachments) > 0 {
				in = t.Plan.Attachments[0].Interface
			}
		}
		f, err := os.Open(*pcapFile)
		if err != nil {
			fmt.Fprintln(stderr, "grain diff: --pcap:", err)
			return 2
		}
		err = d.ReplayPcap(*pcapFile, f, trees[0].Plan, trees[1].Plan, in)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "grain diff: --pcap %s: %v\n", *pcapFile, err)
			return 2
		}
	}
	if *format == "markdown" {
		err = d.WriteMarkdown(stdout)
	} else {
		err = d.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "grain diff:", err)
		return 2
	}
	if d.Empty() {
		return 0
	}
	return 1
}

// loadTree loads and compiles one side of a diff: a directory, or a git
// revision checked out under tmp.
func loadTree(arg, tmp string, limits policies.Limits) (plandiff.Tree, error) {
	dir := arg
	if st, err := os.Stat(arg); err != nil || !st.IsDir() {
		if dir, err = plandiff.Checkout(arg, tmp); err != nil {
			return plandiff.Tree{}, err
		}
	}
	w, err := policies.NewWorker(limits)
	if err != nil {
		return plandiff.Tree{}, err
	}
	defer w.Close()
	snap, err := w.Load(context.Background(), dir)
	if err != nil {
		return plandiff.Tree{}, fmt.Errorf("%s:\n%w", arg, err)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		return plandiff.Tree{}, fmt.Errorf("%s:\n%w", arg, err)
	}
	return plandiff.Tree{Name: arg, Policies: relativePositions(snap.Policies, dir), Plan: plan, Pipeline: snap.Pipeline}, nil
}

// relativePositions names the files of a checked-out revision as they are
// in the repository, not in the temporary directory.
func relativePositions(ps []policies.Policy, dir string) []policies.Policy {
	out := make([]policies.Policy, len(ps))
	for i, p := range ps {
		if rel, err := filepath.Rel(dir, p.Pos.File); err == nil {
			p.Pos.File = rel
		}
		out[i] = p
	}
	return out
}
