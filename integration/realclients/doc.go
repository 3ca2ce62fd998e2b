// Package realclients drives real servers through the real tunnel binary
// with their own stock clients and benchmark tools: PostgreSQL with psql and
// pgbench, Redis with redis-cli and redis-benchmark. Every workload runs once
// through an entry/exit pair and once directly against the server; the test
// logs both sets of figures side by side and checks that both runs did all
// their work without errors and that the data is the same either way. The
// figures are for reading, never thresholds. The package has only tests.
package realclients
