// Package kubernetes holds no code: its tests decode the manifests of this
// directory strictly with the Kubernetes API types and check that they fit
// together and fit the tunnel binary. It is a module of its own so that the
// binary's module does not depend on the Kubernetes API.
package kubernetes
