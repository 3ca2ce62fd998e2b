package tunnel

import "github.com/tunnel-dev/tunnel/config"

// serviceName is a service of an exit as the wire names it: "" for the
// default service, which settings, logs, metrics and people call
// config.DefaultService (String). A name becomes a serviceName once, where
// it enters (settings, the Go API, a listener, a stream header); nothing
// after that compares it with config.DefaultService again.
type serviceName string

// parseServiceName is a name given to the library: "" or
// config.DefaultService for the default service, else a valid service
// name (config.ValidServiceName).
func parseServiceName(name string) (serviceName, error) {
	if name == "" || name == config.DefaultService {
		return "", nil
	}
	return serviceName(name), config.ValidServiceName(name)
}

// wireServiceName is a name as a stream header carries it, which a peer
// may spell config.DefaultService too; readStreamHeader has let through
// printable ASCII only.
func wireServiceName(name string) serviceName {
	if name == config.DefaultService {
		return ""
	}
	return serviceName(name)
}

// wire is the name as the stream header carries it.
func (s serviceName) wire() string { return string(s) }

// String is the name as settings, logs and metrics write it.
func (s serviceName) String() string { return config.DisplayName(string(s)) }
