package daemon

import (
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/grain-ebpf/grain/codegen"
)

// serveReady answers /readyz: 200 once grain enforces, 503 with the reason
// until then and whenever it no longer does.
func (d *Daemon) serveReady(w http.ResponseWriter, _ *http.Request) {
	if why := d.notReady(); why != "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, why+"\n")
		return
	}
	io.WriteString(w, "ready\n")
}

// notReady says why grain does not enforce its policy tree in full, or ""
// when it does: a tree has been applied and every interface it attaches to
// has the packet program. Kernel hooks need no check of their own: an
// apply attaches every one of them or fails, and their links are not
// taken away behind grain's back as an interface can be.
func (d *Daemon) notReady() string {
	d.mu.Lock()
	stopping, r := d.isStopping, d.reloader
	d.mu.Unlock()
	if stopping {
		return "grain is stopping"
	}
	if r == nil {
		return "starting: no policy tree applied yet"
	}
	plan := r.Applied()
	if plan == nil {
		return "starting: no policy tree applied yet"
	}
	attached := r.Engine.Interfaces()
	for _, a := range plan.Attachments {
		if codegen.IsInterfacePattern(a.Interface) {
			if !slices.ContainsFunc(attached, func(name string) bool { return codegen.InterfaceMatches(a.Interface, name) }) {
				return fmt.Sprintf("no interface matching %q has the packet program", a.Interface)
			}
			continue
		}
		if !slices.Contains(attached, a.Interface) {
			return fmt.Sprintf("interface %q does not have the packet program", a.Interface)
		}
	}
	return ""
}
