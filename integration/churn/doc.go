// Package churn checks that the agents forget every connection they have
// carried: it pushes 300,000 short connections (TUNNEL_CHURN_CONNECTIONS)
// through a real entry and exit, and asserts that each agent's live heap,
// read from its status endpoint after a forced collection, is within 1 MB
// of what it was after the first 20,000. State kept per connection, even a
// few bytes of it, grows past that bound; the check measures memory, never
// time. It skips under -short.
//
// The agents run as a binary built without the race detector unless
// TUNNEL_E2E_RACE says otherwise (see harness.RaceBuild): under -race the
// load would take many times longer, and integration/soak already runs
// race-enabled agents under churn. The package has only tests.
package churn
