// Package container tests the container packaging of tunnel: the
// repository's Dockerfile and the docker-compose example in examples/compose,
// run for real against a local Docker engine. No registry is used: the build
// base (the host's Go toolchain and busybox) and a PostgreSQL image (the
// host's Debian PostgreSQL with its libraries) are made with `docker import`
// and cached by tag.
//
// Needs root, a running dockerd, docker-compose, busybox-static, PostgreSQL
// and tcpdump on the host (.ci/run installs them). Without them the test
// skips, or fails when CI=true.
package container
