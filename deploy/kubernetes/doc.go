// Package kubernetes holds grain's Kubernetes manifests (the YAML beside
// this file) and the tests that deploy them on a real single-node cluster.
package kubernetes
