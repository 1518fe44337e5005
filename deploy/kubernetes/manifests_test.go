package kubernetes

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The pod template's checksum/config annotation is the sha256 of
// config.yaml, so that a changed configuration rolls the pods.
func TestConfigChecksum(t *testing.T) {
	config, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ds, err := os.ReadFile("daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(config)
	want := `checksum/config: "sha256:` + hex.EncodeToString(sum[:]) + `"`
	if !strings.Contains(string(ds), want) {
		t.Errorf("daemonset.yaml lacks %s: config.yaml changed, update the annotation (sha256sum deploy/kubernetes/config.yaml)", want)
	}
}

// dashboardMetrics names the grain metrics the Grafana dashboard queries.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../grafana/grain-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grain-dashboard.json: %v", err)
	}
	var names []string
	re := regexp.MustCompile(`\bgrain_[a-z_]+\b\s*[{(\[]`)
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, target := range p.Targets {
			for _, m := range re.FindAllString(target.Expr, -1) {
				name := strings.TrimRight(m, "{([ ")
				if !slices.Contains(names, name) {
					names = append(names, name)
				}
			}
		}
	}
	slices.Sort(names)
	return names
}

func TestDashboardQueriesMetrics(t *testing.T) {
	names := dashboardMetrics(t)
	if len(names) < 7 {
		t.Fatalf("the dashboard queries %v: want grain's metrics", names)
	}
	t.Logf("the dashboard queries %v (TestCluster checks them against a running grain's /metrics)", names)
}
