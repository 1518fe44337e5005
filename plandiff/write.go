package plandiff

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes the diff as lines, one change per line ("no changes"
// when there are none).
func (d *Diff) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, p := range d.Added {
		fmt.Fprintf(&b, "+ policy %s (%s)\n", p.Name, p.Position)
	}
	for _, p := range d.Removed {
		fmt.Fprintf(&b, "- policy %s (%s)\n", p.Name, p.Position)
	}
	for _, c := range d.Changed {
		fmt.Fprintf(&b, "~ policy %s (%s)\n", c.Name, c.Position)
		for _, f := range c.Fields {
			fmt.Fprintf(&b, "    %s: %s -> %s\n", f.Field, orAbsent(f.Old), orAbsent(f.New))
		}
	}
	if d.OrderOld != nil {
		fmt.Fprintf(&b, "~ rule order: %s -> %s\n", strings.Join(d.OrderOld, ", "), strings.Join(d.OrderNew, ", "))
	}
	for _, s := range d.InterfacesAdded {
		fmt.Fprintf(&b, "+ interface %s\n", s)
	}
	for _, s := range d.InterfacesRemoved {
		fmt.Fprintf(&b, "- interface %s\n", s)
	}
	for _, s := range d.HooksAdded {
		fmt.Fprintf(&b, "+ hook %s\n", s)
	}
	for _, s := range d.HooksRemoved {
		fmt.Fprintf(&b, "- hook %s\n", s)
	}
	for _, s := range d.FeaturesNeeded {
		fmt.Fprintf(&b, "+ kernel feature needed: %s\n", s)
	}
	if len(d.Pipeline) > 0 {
		b.WriteString("~ pipeline\n")
		for _, f := range d.Pipeline {
			fmt.Fprintf(&b, "    %s: %s -> %s\n", f.Field, orAbsent(f.Old), orAbsent(f.New))
		}
	}
	if r := d.Replay; r != nil {
		fmt.Fprintf(&b, "pcap %s: %d frames, %d changed\n", r.File, r.Frames, r.Changed)
		for _, t := range r.Transitions {
			fmt.Fprintf(&b, "    %d: %s -> %s (frames %s)\n", t.Count, t.Old, t.New, frameList(t.Frames, t.Count))
		}
	}
	if d.Empty() {
		b.WriteString("no changes\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// md escapes text for a Markdown table cell.
func md(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "`", "'").Replace(s)
}

// WriteMarkdown writes the diff for a pull-request comment.
func (d *Diff) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "### grain diff `%s` → `%s`\n\n", md(d.Old), md(d.New))
	if d.Empty() {
		b.WriteString("No changes.\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	if len(d.Added)+len(d.Removed)+len(d.Changed) > 0 {
		b.WriteString("| | policy | field | old | new |\n|---|---|---|---|---|\n")
		for _, p := range d.Added {
			fmt.Fprintf(&b, "| added | `%s` (%s) | | | |\n", md(p.Name), md(p.Position))
		}
		for _, p := range d.Removed {
			fmt.Fprintf(&b, "| removed | `%s` (%s) | | | |\n", md(p.Name), md(p.Position))
		}
		for _, c := range d.Changed {
			for i, f := range c.Fields {
				what, name := "", ""
				if i == 0 {
					what, name = "changed", fmt.Sprintf("`%s` (%s)", md(c.Name), md(c.Position))
				}
				fmt.Fprintf(&b, "| %s | %s | `%s` | %s | %s |\n", what, name, md(f.Field), md(orAbsent(f.Old)), md(orAbsent(f.New)))
			}
		}
		b.WriteString("\n")
	}
	if d.OrderOld != nil {
		fmt.Fprintf(&b, "**Rule order:** %s → %s\n\n", md(strings.Join(d.OrderOld, ", ")), md(strings.Join(d.OrderNew, ", ")))
	}
	list := func(title string, items []string) {
		if len(items) > 0 {
			fmt.Fprintf(&b, "**%s:** %s\n\n", title, md(strings.Join(items, ", ")))
		}
	}
	list("Interfaces added", d.InterfacesAdded)
	list("Interfaces removed", d.InterfacesRemoved)
	list("Hooks added", d.HooksAdded)
	list("Hooks removed", d.HooksRemoved)
	list("Kernel features newly needed", d.FeaturesNeeded)
	if len(d.Pipeline) > 0 {
		b.WriteString("**Event pipeline:**\n\n| stage | old | new |\n|---|---|---|\n")
		for _, f := range d.Pipeline {
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", md(f.Field), md(orAbsent(f.Old)), md(orAbsent(f.New)))
		}
		b.WriteString("\n")
	}
	if r := d.Replay; r != nil {
		fmt.Fprintf(&b, "**Replay of `%s`:** %d frames, %d changed\n\n", md(r.File), r.Frames, r.Changed)
		if len(r.Transitions) > 0 {
			b.WriteString("| frames | old | new | first frames |\n|---|---|---|---|\n")
			for _, t := range r.Transitions {
				fmt.Fprintf(&b, "| %d | %s | %s | %s |\n", t.Count, md(t.Old), md(t.New), frameList(t.Frames, t.Count))
			}
			b.WriteString("\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
