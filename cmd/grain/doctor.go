package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
)

// grain doctor says what this node (or container) offers grain and what it
// lacks, each with what it enables in grain. It exits 0 when packet
// policies can run here, 1 otherwise: an init container runs it before
// grain (deploy/kubernetes), an operator runs it on a node that misbehaves.

// doctorCheck is one line of the report. Name is stable: scripts read it.
type doctorCheck struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Required: packet policies cannot run without it.
	Required bool   `json:"required"`
	Detail   string `json:"detail"`
	Enables  string `json:"enables"`
}

type doctorReport struct {
	Kernel         string        `json:"kernel"`
	Arch           string        `json:"arch"`
	PacketPolicies bool          `json:"packet_policies"`
	PinPath        string        `json:"pin_path"`
	Checks         []doctorCheck `json:"checks"`
}

func (r *doctorReport) add(name string, required bool, err error, found, enables string) {
	c := doctorCheck{Name: name, OK: err == nil, Required: required, Detail: found, Enables: enables}
	if err != nil {
		c.Detail = err.Error()
	}
	r.Checks = append(r.Checks, c)
}

func cmdDoctor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", "text", "text or json")
	pinPath := fs.String("pin-path", defaultPinPath, "the pin directory `grain run` will use (its bpffs is checked)")
	pinOwner := fs.String("pin-owner", "", "UID:GID: create the pin directory on its bpffs and give it to this user, for a grain that runs without root (an init container does this, holding CAP_CHOWN)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 || (*format != "text" && *format != "json") {
		fmt.Fprintln(stderr, "usage: grain doctor [--format text|json] [--pin-path DIR] [--pin-owner UID:GID]")
		return 2
	}
	uid, gid := -1, -1
	if *pinOwner != "" {
		u, g, ok := strings.Cut(*pinOwner, ":")
		var err1, err2 error
		uid, err1 = strconv.Atoi(u)
		gid, err2 = strconv.Atoi(g)
		if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
			fmt.Fprintf(stderr, "grain doctor: --pin-owner %q: want UID:GID, numbers (e.g. 65532:65532)\n", *pinOwner)
			return 2
		}
	}
	if err := raiseCapabilities(); err != nil {
		fmt.Fprintln(stderr, "grain doctor:", err)
	}
	r := diagnose(*pinPath, uid, gid)
	if *format == "json" {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printDoctor(stdout, r)
	}
	if !r.PacketPolicies {
		return 1
	}
	return 0
}

func diagnose(pinPath string, uid, gid int) *doctorReport {
	release, tooOld := bpf.KernelRelease()
	r := &doctorReport{Kernel: release, Arch: runtime.GOARCH, PinPath: pinPath}

	var kernelErr error
	if tooOld {
		kernelErr = fmt.Errorf("Linux %s is older than grain supports (%s)", release, bpf.MinKernel)
	}
	r.add("kernel", true, kernelErr, "Linux "+release, "grain runs on Linux "+bpf.MinKernel+" and later")

	missing, capErr := bpf.MissingCapabilities()
	if capErr == nil && len(missing) > 0 {
		capErr = fmt.Errorf("lacks %s (holds %s): give the container CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or run it privileged", strings.Join(missing, ", "), heldCapabilities())
	}
	r.add("capabilities", true, capErr, "holds "+heldCapabilities(), "CAP_BPF and CAP_PERFMON load programs and maps, CAP_NET_ADMIN attaches them to interfaces; CAP_SYS_ADMIN (privileged) also lets grain mount bpffs and tracefs itself")

	sysErr := bpf.SyscallUsable()
	r.add("bpf_syscall", true, sysErr, "bpf() works", "every program and map")

	mode, filters := seccompMode()
	var secErr error
	secFound := "no seccomp filter"
	if mode == 2 {
		secFound = fmt.Sprintf("%d seccomp filter(s), and bpf() is allowed", filters)
		if sysErr != nil && capErr == nil {
			secErr = fmt.Errorf("a seccomp profile (%d filter(s)) refuses bpf(): give the container a profile that allows bpf (securityContext.seccompProfile: Unconfined, or a Localhost profile)", filters)
		}
	}
	r.add("seccomp", true, secErr, secFound, "a container runtime's default profile (Docker's) refuses bpf()")

	ready := capErr == nil && sysErr == nil
	r.add("xdp", true, gate(ready, bpf.HaveXDP), "XDP programs", "packet policies (XDP on physical interfaces)")
	r.add("ring_buffer", true, gate(ready, bpf.HaveRingBuffer), "BPF ring buffers", "events of every policy")
	r.add("xdp_program", true, gate(ready, loadXDPOnce), "grain's XDP program passes this kernel's verifier", "packet policies")
	r.add("tcx", false, gate(ready, bpf.HaveTCX), "tcx links (Linux 6.6)", "on veth interfaces (pods), a tc program attached by tcx; without, generic XDP")

	probes := bpf.DetectProbeFeatures()
	r.add("btf", false, probes.BTF, "/sys/kernel/btf/vmlinux", "CO-RE field reads and fentry for kernel hook policies")
	r.add("kprobes", false, probes.Kprobes, "kprobes", "kprobe hook policies, and syscall hooks where fentry is missing")
	r.add("fentry", false, probes.FentryErr, "fentry with attach cookies (BPF trampolines)", "cheaper kernel function hooks than kprobes")
	r.add("attach_cookie", false, probes.AttachCookie, "bpf_get_attach_cookie (Linux 5.15)", "kernel hook policies: one program serves every hook")
	r.add("raw_tracepoint_cookie", false, probes.RawTracepointCookie, "raw tracepoints with cookies (Linux 6.10)", "tracepoint hooks that read no field run as raw tracepoints, cheaper")
	r.add("tracefs", false, probes.Tracepoints, bpf.TracefsPath+" with events", "tracepoint hook policies (their field layouts)")

	found, err := checkPinPath(pinPath, uid, gid)
	r.add("bpffs", true, err, found, "pinned maps and links: enforcement survives grain's restart and upgrade")
	r.add("bpffs_propagation", false, nil, mountPropagation(pinPath), "a bpffs grain mounts itself reaches the host only through a shared mount (Bidirectional); the host's own bpffs needs none")

	r.PacketPolicies = true
	for _, c := range r.Checks {
		if c.Required && !c.OK {
			r.PacketPolicies = false
		}
	}
	return r
}

// gate runs a kernel probe only where bpf() is usable: without it every
// probe fails alike, and the capability or seccomp line says why.
func gate(ready bool, probe func() error) error {
	if !ready {
		return errors.New("not probed: bpf() is not usable (see capabilities, bpf_syscall, seccomp)")
	}
	return probe()
}

// loadXDPOnce loads grain's XDP program, unpinned, and closes it.
func loadXDPOnce() error {
	x, err := bpf.LoadXDP(bpf.XDPOptions{})
	if err != nil {
		return err
	}
	return x.Close()
}

var capabilityNames = []struct {
	name string
	cap  int
}{
	{"CAP_BPF", unix.CAP_BPF}, {"CAP_PERFMON", unix.CAP_PERFMON}, {"CAP_NET_ADMIN", unix.CAP_NET_ADMIN},
	{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN}, {"CAP_SYS_RESOURCE", unix.CAP_SYS_RESOURCE}, {"CAP_CHOWN", unix.CAP_CHOWN},
}

// heldCapabilities names the capabilities that matter to grain which the
// process holds in its effective set.
func heldCapabilities() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return "(capget failed: " + err.Error() + ")"
	}
	var held []string
	for _, c := range capabilityNames {
		if data[c.cap/32].Effective&(1<<(c.cap%32)) != 0 {
			held = append(held, c.name)
		}
	}
	if len(held) == 0 {
		return "none of CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN"
	}
	return strings.Join(held, ", ")
}

// seccompMode reads the Seccomp and Seccomp_filters lines of
// /proc/self/status (mode 2: filtered).
func seccompMode() (mode, filters int) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, _ := strings.Cut(s.Text(), ":")
		switch k {
		case "Seccomp":
			mode, _ = strconv.Atoi(strings.TrimSpace(v))
		case "Seccomp_filters":
			filters, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return mode, filters
}

// checkPinPath says whether `grain run --pin-path dir` can pin there: dir
// (or the directory it would be created in) must be on a bpffs and writable.
// With an owner, it creates dir and gives it to that user first.
func checkPinPath(dir string, uid, gid int) (string, error) {
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if dir == "/sys/fs/bpf" || strings.HasPrefix(dir, "/sys/fs/bpf/") {
			if c := heldCapabilities(); strings.Contains(c, "CAP_SYS_ADMIN") {
				return "no bpffs at /sys/fs/bpf: grain will mount one (its pins then live only as long as that mount: mount the host's /sys/fs/bpf instead)", nil
			}
		}
		return "", fmt.Errorf("%s is not on a bpffs: mount the host's /sys/fs/bpf there (a hostPath volume), or mount -t bpf bpf DIR", existing)
	}
	if uid >= 0 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("create the pin directory %s: %w", dir, err)
		}
		// chmod while it is still ours: afterwards only CAP_FOWNER could
		// (an upgrade's init container finds the directory already given).
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return "", fmt.Errorf("stat the pin directory %s: %w", dir, err)
		}
		if st.Mode&0o777 != 0o700 && int(st.Uid) == os.Geteuid() {
			if err := os.Chmod(dir, 0o700); err != nil {
				return "", fmt.Errorf("chmod 700 the pin directory %s: %w", dir, err)
			}
		}
		if int(st.Uid) != uid || int(st.Gid) != gid {
			if err := os.Chown(dir, uid, gid); err != nil {
				return "", fmt.Errorf("give the pin directory %s to %d:%d (needs CAP_CHOWN): %w", dir, uid, gid, err)
			}
		}
		return fmt.Sprintf("%s is on a bpffs, given to %d:%d", dir, uid, gid), nil
	}
	if err := unix.Faccessat(unix.AT_FDCWD, existing, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		what := "create the pin directory in"
		if existing == dir {
			what = "pin in"
		}
		return "", fmt.Errorf("cannot %s %s (uid %d): make it writable for grain's user (grain doctor --pin-owner UID:GID, run as root, does it)", what, existing, os.Geteuid())
	}
	if existing == dir {
		return dir + " is on a bpffs and writable", nil
	}
	return existing + " is on a bpffs and writable: grain creates " + dir, nil
}

// mountPropagation describes the propagation of the mount that holds dir
// (or its nearest existing parent), from /proc/self/mountinfo.
func mountPropagation(dir string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer f.Close()
	best, bestFields := "", []string(nil)
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 7 {
			continue
		}
		mp := fields[4]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, bestFields = mp, fields
		}
	}
	if bestFields == nil {
		return "unknown: no mount holds " + dir
	}
	var kinds []string
	for _, opt := range bestFields[6:] {
		if opt == "-" {
			break
		}
		switch {
		case strings.HasPrefix(opt, "shared:"):
			kinds = append(kinds, "shared (Bidirectional)")
		case strings.HasPrefix(opt, "master:"):
			kinds = append(kinds, "receives the host's mounts (HostToContainer)")
		}
	}
	if len(kinds) == 0 {
		kinds = append(kinds, "private")
	}
	return best + ": " + strings.Join(kinds, ", ")
}

func printDoctor(w io.Writer, r *doctorReport) {
	fmt.Fprintf(w, "grain doctor: Linux %s (%s)\n", r.Kernel, r.Arch)
	for _, c := range r.Checks {
		status := "ok  "
		switch {
		case !c.OK && c.Required:
			status = "FAIL"
		case !c.OK:
			status = "no  "
		}
		fmt.Fprintf(w, "%s %-22s %s\n     %-22s for: %s\n", status, c.Name, c.Detail, "", c.Enables)
	}
	if r.PacketPolicies {
		fmt.Fprintln(w, "packet policies: can run here")
	} else {
		fmt.Fprintln(w, "packet policies: cannot run here (see FAIL above)")
	}
}
