package pipeline

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// procRoot is where process information is read.
var procRoot = "/proc"

// cgroupInfo is what enrichment knows of a process's cgroup.
type cgroupInfo struct {
	path      string // cgroup v2 path (or the v1 path of the first hierarchy)
	container string // container id when the path names one
}

// cgroupCache remembers the cgroup of recent pids: an event stream sees
// the same processes again and again. It is bounded and entries expire,
// since pids are reused.
type cgroupCache struct {
	root    string
	entries map[uint64]cgroupEntry
}

type cgroupEntry struct {
	info cgroupInfo
	ok   bool
	at   time.Time
}

const (
	cgroupCacheSize = 4096
	cgroupCacheTTL  = 10 * time.Second
)

func newCgroupCache(root string) *cgroupCache {
	return &cgroupCache{root: root, entries: map[uint64]cgroupEntry{}}
}

func (c *cgroupCache) lookup(pid uint64) (cgroupInfo, bool) {
	now := time.Now()
	if e, ok := c.entries[pid]; ok && now.Sub(e.at) < cgroupCacheTTL {
		return e.info, e.ok
	}
	if len(c.entries) >= cgroupCacheSize {
		clear(c.entries)
	}
	info, ok := readCgroup(filepath.Join(c.root, strconv.FormatUint(pid, 10), "cgroup"))
	c.entries[pid] = cgroupEntry{info: info, ok: ok, at: now}
	return info, ok
}

// containerID finds a 64-hex-digit id in a path segment, as Docker,
// containerd, CRI-O and Podman name their cgroups
// (docker-ID.scope, cri-containerd-ID.scope, /docker/ID, libpod-ID.scope).
var containerID = regexp.MustCompile(`(?:^|[-/:])([0-9a-f]{64})(?:\.scope)?$`)

// readCgroup reads /proc/PID/cgroup: the "0::PATH" line of cgroup v2, or
// the first line of a v1 hierarchy.
func readCgroup(file string) (cgroupInfo, bool) {
	f, err := os.Open(file)
	if err != nil {
		return cgroupInfo{}, false
	}
	defer f.Close()
	var path string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			path = parts[2]
			break
		}
		if path == "" {
			path = parts[2]
		}
	}
	if path == "" {
		return cgroupInfo{}, false
	}
	info := cgroupInfo{path: path}
	for _, seg := range strings.Split(path, "/") {
		if m := containerID.FindStringSubmatch(seg); m != nil {
			info.container = m[1]
		}
	}
	return info, true
}

// CgroupResolver finds the cgroup path and container id of processes for
// readers that enrich events themselves (kernel-hook events carry them as
// process context). It caches like the enrich stage and is not safe for
// concurrent use.
type CgroupResolver struct{ cache *cgroupCache }

func NewCgroupResolver() *CgroupResolver {
	return &CgroupResolver{cache: newCgroupCache(procRoot)}
}

// Lookup returns the cgroup path of process pid and its container id, ""
// when it is in none; ok is false when the process is gone.
func (r *CgroupResolver) Lookup(pid uint64) (path, container string, ok bool) {
	info, ok := r.cache.lookup(pid)
	return info.path, info.container, ok
}
