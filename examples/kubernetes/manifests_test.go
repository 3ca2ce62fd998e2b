package kubernetes

// The manifests are decoded strictly (an unknown field or a duplicate key is
// an error) with the Kubernetes API types, then checked against each other
// and against the tunnel binary's own --help: flags, environment variables,
// ports, probes, key files and their modes, Services, NetworkPolicies and
// the securityContext of every container. TestChecksCatchMistakes breaks
// the manifests one way at a time and expects each check to say so.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// tunnelImage is the image name the manifests give the agents' containers;
// kustomization.yaml's images: points it at a registry.
const tunnelImage = "tunnel"

func TestManifests(t *testing.T) {
	help := tunnelHelp(t)
	for _, p := range problems(os.DirFS("."), help) {
		t.Error(p)
	}
}

// TestChecksCatchMistakes breaks the manifests one way at a time and expects
// a problem that says so: each check can fail. A few changes that are as
// good (want "") must pass.
func TestChecksCatchMistakes(t *testing.T) {
	help := tunnelHelp(t)
	for _, tc := range []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "exit.yaml", "          args:\n            - exit\n", "          argz: []\n          args:\n            - exit\n", `unknown field "argz"`},
		{"duplicate key", "networkpolicy.yaml", "  name: tunnel-exit\nspec:", "  name: tunnel-exit\n  name: other\nspec:", `"name" already set`},
		{"unknown kind", "exit.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgets", `"PodDisruptionBudgets"`},
		{"file not in kustomization", "kustomization.yaml", "  - postgres.yaml\n", "", "postgres.yaml is not in kustomization.yaml"},
		{"missing resource file", "kustomization.yaml", "  - postgres.yaml\n", "  - postgres.yaml\n  - db.yaml\n", "db.yaml"},
		{"unknown subcommand", "exit.yaml", "            - exit\n", "            - exits\n", `"exits"`},
		{"unknown flag", "exit.yaml", "--log-format=json", "--log-formatt=json", "unknown flag --log-formatt"},
		{"flag value as next arg", "app.yaml", "- --peer=tunnel-exit:7000", "- --peer\n            - tunnel-exit:7000", "--peer=VALUE"},
		{"required flag missing", "exit.yaml", "            - --forward=postgres:5432\n", "", "--forward is required"},
		{"unknown environment variable", "exit.yaml", "TUNNEL_STATUS_ADDR", "TUNNEL_STATUS_ADDRESS", "TUNNEL_STATUS_ADDRESS is not a variable"},
		{"container port", "exit.yaml", "containerPort: 7000", "containerPort: 7001", "no container port 7000 (--listen=:7000)"},
		{"listen not given", "exit.yaml", "            - --listen=:7000\n", "", "give --listen"},
		{"listen port", "exit.yaml", "--listen=:7000", "--listen=:7002", "no container port 7002"},
		{"exit on loopback", "exit.yaml", "--listen=:7000", "--listen=127.0.0.1:7000", "listens on loopback"},
		{"entry off loopback", "app.yaml", "--listen=127.0.0.1:5000", "--listen=:5000", "not loopback"},
		{"app's port", "app.yaml", `value: "5000"`, `value: "5001"`, "PGPORT=5001"},
		{"no status address", "exit.yaml", "            - name: TUNNEL_STATUS_ADDR\n              value: 127.0.0.1:9070\n", "", "no --status-addr"},
		{"status address in args", "exit.yaml", "--log-format=json", "--status-addr=127.0.0.1:9071", "listens on 127.0.0.1:9071"},
		{"liveness path", "exit.yaml", `"healthcheck", "/healthz"]`, `"healthcheck", "/health"]`, "asks /health, want /healthz"},
		{"readiness path", "app.yaml", `"healthcheck", "/readyz"]`, `"healthcheck", "/healthz"]`, "asks /healthz, want /readyz"},
		{"no liveness probe", "exit.yaml", "livenessProbe:", "startupProbe:", "no livenessProbe"},
		{"httpGet probe on loopback", "exit.yaml", "            exec:\n              command: [\"tunnel\", \"healthcheck\", \"/healthz\"]\n",
			"            httpGet:\n              path: /healthz\n              port: 9070\n", "kubelet"},
		{"httpGet probe port", "exit.yaml", "            exec:\n              command: [\"tunnel\", \"healthcheck\", \"/healthz\"]\n",
			"            httpGet:\n              path: /healthz\n              port: 9071\n", "port 9071"},
		{"probe timeout", "exit.yaml", "timeoutSeconds: 10", "timeoutSeconds: 5", "--timeout"},
		{"unknown healthcheck flag", "exit.yaml", `"--timeout=8s"`, `"--timout=8s"`, "unknown flag --timout"},
		{"Secret name", "app.yaml", "secretName: tunnel-entry-key", "secretName: tunnel-entry-keys", `Secret "tunnel-entry-keys"`},
		{"Secret key", "app.yaml", "--key=/etc/tunnel/key/entry.key", "--key=/etc/tunnel/key/tunnel.key", "tunnel.key"},
		{"key not mounted", "exit.yaml", "mountPath: /etc/tunnel/key\n", "mountPath: /etc/tunnel/keys\n", "not on a volume"},
		{"key on a ConfigMap", "exit.yaml", "          secret:\n            secretName: tunnel-exit-key\n            defaultMode: 0440\n", "          configMap:\n            name: tunnel-exit-authorized-keys\n", "not from a Secret"},
		{"insecure mode without the flag", "exit.yaml", "            - --allow-insecure-key-perms\n", "", "--allow-insecure-key-perms"},
		{"key unreadable", "app.yaml", "        fsGroup: 65532\n", "", "cannot read"},
		{"ConfigMap name", "exit.yaml", "name: tunnel-exit-authorized-keys", "name: tunnel-exit-authorized-keyz", `ConfigMap "tunnel-exit-authorized-keyz"`},
		{"public keys not a directory of .pub", "kustomization.yaml", "app.pub=keys/entry.pub", "app.pem.txt=keys/entry.pub", "no .pub or .pem"},
		{"secretKeyRef key", "postgres.yaml", "key: password", "key: passwd", `no key "passwd"`},
		{"Service targetPort", "exit.yaml", "targetPort: tunnel", "targetPort: tunnels", `targetPort "tunnels"`},
		{"headless Service port", "exit.yaml", "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: tunnel-exit\n  ports:\n    - name: tunnel\n      port: 7000\n",
			"  clusterIP: None\n  selector:\n    app.kubernetes.io/name: tunnel-exit\n  ports:\n    - name: tunnel\n      port: 7001\n", "headless, so clients dial the pods on port 7001 itself"},
		{"entry's peer headless", "app.yaml", "--peer=tunnel-exit:7000", "--peer=tunnel-exit-pods:7000", ""},
		{"entry's peers, one with its own keys", "app.yaml", "- --peer=tunnel-exit:7000", "- --peer=tunnel-exit:7000\n            - --peer=tunnel-exit-pods:7000=/etc/tunnel/peer-keys", ""},
		{"Service selector", "postgres.yaml", "    app.kubernetes.io/name: postgres\n  ports:", "    app.kubernetes.io/name: postgresql\n  ports:", "Service postgres selects no pod"},
		{"entry's peer port", "app.yaml", "--peer=tunnel-exit:7000", "--peer=tunnel-exit:7001", "has no port 7001"},
		{"entry's second peer", "app.yaml", "- --peer=tunnel-exit:7000", "- --peer=tunnel-exit:7000\n            - --peer=tunnel-exit:7001", "has no port 7001"},
		{"entry's peer's own keys", "app.yaml", "- --peer=tunnel-exit:7000", "- --peer=tunnel-exit:7000=/etc/tunnel/exit.pub", "--peer=tunnel-exit:7000=/etc/tunnel/exit.pub is not a volume"},
		{"entry without keys to pin", "app.yaml", "            - --peer-key=/etc/tunnel/peer-keys\n", "", "no keys of its own"},
		{"entry's peer service", "app.yaml", "--peer=tunnel-exit:7000", "--peer=exit:7000", `no Service "exit"`},
		{"exit's backend port", "exit.yaml", "--forward=postgres:5432", "--forward=postgres:5433", "has no port 5433"},
		{"policy port", "networkpolicy.yaml", "port: 7000", "port: 7001", "admits port 7001"},
		{"policy extra port", "networkpolicy.yaml", "          port: 7000\n", "          port: 7000\n        - protocol: TCP\n          port: 9070\n", "admits port 9070"},
		{"policy without ports", "networkpolicy.yaml", "      ports:\n        - protocol: TCP\n          port: 7000\n", "", "admits every port"},
		{"policy from anywhere", "networkpolicy.yaml", "    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: app\n      ports:", "    - ports:", "admits every source"},
		{"policy from other pods", "networkpolicy.yaml", "              app.kubernetes.io/name: app\n", "              app.kubernetes.io/name: app2\n", "no rule admits Deployment app"},
		{"policy selects other pods", "networkpolicy.yaml", "      app.kubernetes.io/name: tunnel-exit\n  policyTypes", "      app.kubernetes.io/name: tunnel-exits\n  policyTypes", "no NetworkPolicy selects Deployment tunnel-exit"},
		{"database policy", "networkpolicy.yaml", "              app.kubernetes.io/name: tunnel-exit\n", "              app.kubernetes.io/name: app\n", "no rule admits Deployment tunnel-exit"},
		{"readOnlyRootFilesystem", "postgres.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"allowPrivilegeEscalation", "app.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation"},
		{"capabilities", "exit.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "drop ALL"},
		{"seccomp", "exit.yaml", "type: RuntimeDefault", "type: Unconfined", "seccompProfile"},
		{"runAsUser root", "postgres.yaml", "runAsUser: 999", "runAsUser: 0", "runAsUser"},
		{"runAsNonRoot", "app.yaml", "          securityContext:\n            runAsNonRoot: true\n", "          securityContext:\n", "runAsNonRoot"},
		{"memory request", "app.yaml", "              memory: 32Mi\n", "", "memory request"},
		{"memory limit", "exit.yaml", "              memory: 512Mi\n", "", "memory limit"},
		{"grace period", "app.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", "--drain-timeout"},
		{"service links", "exit.yaml", "enableServiceLinks: false", "enableServiceLinks: true", "enableServiceLinks"},
		{"service account token", "app.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true", "automountServiceAccountToken"},
		{"budget selector", "exit.yaml", "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: tunnel-exit", "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: exit", "PodDisruptionBudget tunnel-exit selects no pod"},
		{"deployment selector", "exit.yaml", "      app.kubernetes.io/name: tunnel-exit\n  strategy:", "      app.kubernetes.io/name: exit\n  strategy:", "does not select its own pods"},
		{"entry's peer is no exit", "exit.yaml", "    app.kubernetes.io/name: tunnel-exit\n  ports:\n    - name: tunnel\n      port: 7000\n      targetPort: tunnel\n",
			"    app.kubernetes.io/name: postgres\n  ports:\n    - name: tunnel\n      port: 7000\n      targetPort: postgres\n", "sends it to no exit"},
		{"app's host", "app.yaml", "              value: 127.0.0.1\n", "              value: db\n", "PGHOST=db"},
		{"probe URL", "app.yaml", `"healthcheck", "/readyz"]`, `"healthcheck", "http://127.0.0.1:9071/readyz"]`, "asks 127.0.0.1:9071"},
		{"probe not healthcheck", "exit.yaml", `["tunnel", "healthcheck", "/healthz"]`, `["sh", "-c", "wget -qO- 127.0.0.1:9070/healthz"]`, "want tunnel healthcheck"},
		{"key mount writable", "exit.yaml", "              mountPath: /etc/tunnel/key\n              readOnly: true\n", "              mountPath: /etc/tunnel/key\n", "readOnly"},
		{"key subPath", "exit.yaml", "mountPath: /etc/tunnel/key\n", "mountPath: /etc/tunnel/key\n              subPath: keys\n", "subPath"},
		{"public keys by items", "exit.yaml", "            name: tunnel-exit-authorized-keys\n", "            name: tunnel-exit-authorized-keys\n            items:\n              - key: app.pub\n                path: app.pub\n", "without items"},
		{"command set", "exit.yaml", "          args:\n            - exit\n", "          command: [\"tunnel\"]\n          args:\n            - exit\n", "command is set"},
		{"argument not a flag", "exit.yaml", "--log-format=json", "json", `["json"] are not flags`},
		{"limit below request", "exit.yaml", "              memory: 512Mi\n", "              memory: 32Mi\n", "memory limit 32Mi below its request 64Mi"},
		{"image name", "kustomization.yaml", "  - name: tunnel\n", "  - name: tunnel-agent\n", "tunnel-agent"},
		{"README key commands", "README.md", "keygen --out keys/exit", "keygen --out keys/tunnel-exit", "keys/exit.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := copyDir(t)
			f := fsys[tc.file]
			if !bytes.Contains(f.Data, []byte(tc.old)) {
				t.Fatalf("%s does not contain %q", tc.file, tc.old)
			}
			f.Data = bytes.Replace(f.Data, []byte(tc.old), []byte(tc.new), 1)
			got := problems(fsys, help)
			if tc.want == "" { // a change that is as good
				for _, p := range got {
					t.Error(p)
				}
				return
			}
			for _, p := range got {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Errorf("no problem mentions %q; problems:\n%s", tc.want, strings.Join(got, "\n"))
		})
	}
}

// copyDir is this directory's manifests and README in memory.
func copyDir(t *testing.T) fstest.MapFS {
	fsys := fstest.MapFS{}
	names, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append(names, "README.md") {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fsys[name] = &fstest.MapFile{Data: data}
	}
	return fsys
}

// problems decodes the manifests in fsys and returns what is wrong with them.
func problems(fsys fs.FS, help map[string]*command) []string {
	m, err := load(fsys)
	if err != nil {
		return []string{err.Error()}
	}
	c := &checker{m: m, help: help}
	c.check()
	return c.problems
}

// kustomization is the part of kustomization.yaml that this example uses.
// It is decoded strictly too, so a field that these checks do not know of
// cannot slip in unseen.
type kustomization struct {
	APIVersion         string      `json:"apiVersion"`
	Kind               string      `json:"kind"`
	Resources          []string    `json:"resources"`
	Images             []image     `json:"images"`
	SecretGenerator    []generator `json:"secretGenerator"`
	ConfigMapGenerator []generator `json:"configMapGenerator"`
}

type image struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
}

type generator struct {
	Name  string   `json:"name"`
	Files []string `json:"files"`
}

// manifests is what the kustomization deploys.
type manifests struct {
	yamlFiles   []string // every .yaml file of the directory
	kust        kustomization
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	policies    []*networkingv1.NetworkPolicy
	budgets     []*policyv1.PodDisruptionBudget
	secrets     map[string][]string // generated Secret name: its keys
	configMaps  map[string][]string // generated ConfigMap name: its keys
	readme      string
}

// load reads kustomization.yaml and every resource it lists, strictly.
func load(fsys fs.FS) (*manifests, error) {
	m := &manifests{secrets: map[string][]string{}, configMaps: map[string][]string{}}
	var err error
	if m.yamlFiles, err = fs.Glob(fsys, "*.y*ml"); err != nil {
		return nil, err
	}
	data, err := fs.ReadFile(fsys, "kustomization.yaml")
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("kustomization.yaml: %w", err)
	}
	if err := decodeJSONStrict(j, &m.kust); err != nil {
		return nil, fmt.Errorf("kustomization.yaml: %w", err)
	}
	if m.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kust.Kind != "Kustomization" {
		return nil, fmt.Errorf("kustomization.yaml: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", m.kust.APIVersion, m.kust.Kind)
	}
	for _, g := range m.kust.SecretGenerator {
		m.secrets[g.Name] = generatedKeys(g)
	}
	for _, g := range m.kust.ConfigMapGenerator {
		m.configMaps[g.Name] = generatedKeys(g)
	}
	for _, name := range m.kust.Resources {
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("kustomization.yaml lists %s: %w", name, err)
		}
		for i, doc := range splitDocuments(data) {
			if err := m.add(doc); err != nil {
				return nil, fmt.Errorf("%s, document %d: %w", name, i+1, err)
			}
		}
	}
	readme, err := fs.ReadFile(fsys, "README.md")
	if err != nil {
		return nil, err
	}
	m.readme = string(readme)
	return m, nil
}

// generatedKeys are the keys of a generated Secret or ConfigMap: a file
// given as KEY=PATH has key KEY, else its base name.
func generatedKeys(g generator) []string {
	var keys []string
	for _, f := range g.Files {
		key, _, ok := strings.Cut(f, "=")
		if !ok {
			key = path.Base(f)
		}
		keys = append(keys, key)
	}
	return keys
}

// generatedFiles are the files the generators read.
func (m *manifests) generatedFiles() []string {
	var files []string
	for _, g := range slices.Concat(m.kust.SecretGenerator, m.kust.ConfigMapGenerator) {
		for _, f := range g.Files {
			_, p, ok := strings.Cut(f, "=")
			if !ok {
				p = f
			}
			files = append(files, p)
		}
	}
	return files
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func splitDocuments(data []byte) []string {
	return documentSeparator.Split(string(data), -1)
}

// add decodes one YAML document strictly into the API type its apiVersion
// and kind name. A document of comments alone is skipped.
func (m *manifests) add(doc string) error {
	j, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return err
	}
	if string(bytes.TrimSpace(j)) == "null" {
		return nil
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return err
	}
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		d := &appsv1.Deployment{}
		m.deployments = append(m.deployments, d)
		return decodeJSONStrict(j, d)
	case "v1 Service":
		s := &corev1.Service{}
		m.services = append(m.services, s)
		return decodeJSONStrict(j, s)
	case "networking.k8s.io/v1 NetworkPolicy":
		p := &networkingv1.NetworkPolicy{}
		m.policies = append(m.policies, p)
		return decodeJSONStrict(j, p)
	case "policy/v1 PodDisruptionBudget":
		b := &policyv1.PodDisruptionBudget{}
		m.budgets = append(m.budgets, b)
		return decodeJSONStrict(j, b)
	}
	return fmt.Errorf("apiVersion %q kind %q: not a kind these checks know; add it to manifests.add and check it", tm.APIVersion, tm.Kind)
}

// decodeJSONStrict decodes the JSON of one YAML document into v; a field v
// does not have is an error.
func decodeJSONStrict(j []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// command is what `tunnel COMMAND --help` says of the command's flags.
type command struct {
	name  string
	flags map[string]flag   // by name, without the dashes
	env   map[string]string // environment variable: the flag it sets
}

type flag struct {
	value    bool   // takes a value (--name=VALUE); a boolean otherwise
	def      string // the default, "" if none
	required bool
}

// binDir holds the tunnel binary, built once for all tests (tunnelBinary);
// TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tunnel-kubernetes-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce  sync.Once
	buildErr   error
	helpOnce   sync.Once
	helpResult map[string]*command
	helpErr    error
)

// tunnelBinary builds the tunnel binary from the repository root (the
// module two directories up), once, and returns its path.
func tunnelBinary(t *testing.T) string {
	bin := filepath.Join(binDir, "tunnel")
	buildOnce.Do(func() { buildErr = buildTunnel(bin) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

func buildTunnel(bin string) error {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(gomod, []byte("module github.com/tunnel-dev/tunnel\n")) {
		return fmt.Errorf("%s is not the tunnel module's root (go.mod: %v)", root, err)
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/tunnel")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/tunnel in %s: %v\n%s", root, err, out)
	}
	return nil
}

// tunnelHelp reads the flags of the commands the manifests run from the
// binary's --help.
func tunnelHelp(t *testing.T) map[string]*command {
	bin := tunnelBinary(t)
	helpOnce.Do(func() { helpResult, helpErr = readHelp(bin) })
	if helpErr != nil {
		t.Fatal(helpErr)
	}
	return helpResult
}

func readHelp(bin string) (map[string]*command, error) {
	cmds := map[string]*command{}
	for _, name := range []string{"entry", "exit", "healthcheck"} {
		out, err := exec.Command(bin, name, "--help").Output()
		if err != nil {
			return nil, fmt.Errorf("tunnel %s --help: %v", name, err)
		}
		c := parseHelp(name, string(out))
		if len(c.flags) < 3 {
			return nil, fmt.Errorf("tunnel %s --help: found only %d flags in:\n%s", name, len(c.flags), out)
		}
		cmds[name] = c
	}
	return cmds, nil
}

var (
	// A flag's first line: "  -h, --help   Show ...", "      --listen=ADDR   Address ...".
	helpFlagLine = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z][a-z0-9-]*)(?:=(\S+))?`)
	helpEnv      = regexp.MustCompile(`\$(TUNNEL_[A-Z0-9_]+)`)
	// "Required ($TUNNEL_KEY)." or "Required.", not "Required, unless …".
	helpRequired = regexp.MustCompile(`\bRequired(\.|\s*\(|\s*$)`)
	// A placeholder (ADDR, FILE|DIR, HOST:PORT[=KEYS],...) has no lower-case
	// letter, digit or quote, which a default (5s, 64, "info") has.
	placeholder = regexp.MustCompile(`^[^a-z0-9"]+$`)
)

func parseHelp(name, help string) *command {
	c := &command{name: name, flags: map[string]flag{}, env: map[string]string{}}
	var cur string // the flag whose description is being read
	var text strings.Builder
	finish := func() {
		if cur == "" {
			return
		}
		f := c.flags[cur]
		f.required = helpRequired.MatchString(text.String())
		c.flags[cur] = f
		for _, m := range helpEnv.FindAllStringSubmatch(text.String(), -1) {
			c.env[m[1]] = cur
		}
		cur = ""
		text.Reset()
	}
	for line := range strings.Lines(help) {
		if m := helpFlagLine.FindStringSubmatch(line); m != nil {
			finish()
			cur = m[1]
			f := flag{value: m[2] != ""}
			if f.value && !placeholder.MatchString(m[2]) {
				f.def = strings.Trim(m[2], `"`)
			}
			c.flags[cur] = f
			text.WriteString(line)
			continue
		}
		if strings.TrimSpace(line) == "" {
			finish()
			continue
		}
		if cur != "" {
			text.WriteString(line)
		}
	}
	finish()
	return c
}

// invocation is a tunnel command line with its environment.
type invocation struct {
	cmd  *command
	args map[string][]string // flag: its values in order ("true" for a boolean given alone)
	env  []corev1.EnvVar
}

// parseInvocation reads args (after the command name) against cmd's flags.
// Flags with a value must be written --name=VALUE, so that a value is never
// taken for a flag or the other way round. Arguments that are not flags are
// returned apart.
func parseInvocation(cmd *command, args []string, env []corev1.EnvVar) (inv invocation, positional []string, problems []string) {
	inv = invocation{cmd: cmd, args: map[string][]string{}, env: env}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			positional = append(positional, a)
			continue
		}
		name, value, hasValue := strings.Cut(a[2:], "=")
		f, ok := cmd.flags[name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("unknown flag --%s (not in `tunnel %s --help`)", name, cmd.name))
		case f.value && !hasValue:
			problems = append(problems, fmt.Sprintf("write --%s=VALUE, in one argument", name))
		case !hasValue:
			value = "true"
		}
		inv.args[name] = append(inv.args[name], value)
	}
	for _, e := range env {
		if strings.HasPrefix(e.Name, "TUNNEL_") {
			if _, ok := cmd.env[e.Name]; !ok {
				problems = append(problems, fmt.Sprintf("environment variable %s is not a variable of `tunnel %s` (see its --help)", e.Name, cmd.name))
			}
		}
	}
	for name, f := range cmd.flags {
		if _, ok := inv.setting(name); f.required && !ok {
			problems = append(problems, fmt.Sprintf("--%s is required by `tunnel %s`", name, cmd.name))
		}
	}
	return inv, positional, problems
}

// setting is the value of a flag as the command sees it: from its
// arguments (the last one given), else from its environment, else the
// default in its help.
func (inv invocation) setting(name string) (string, bool) {
	if v, ok := inv.args[name]; ok {
		return v[len(v)-1], true
	}
	for _, e := range inv.env {
		if inv.cmd.env[e.Name] == name && e.ValueFrom == nil {
			return e.Value, true
		}
	}
	f := inv.cmd.flags[name]
	return f.def, f.def != ""
}

// list is the values of a flag that may be repeated or hold several values
// separated by commas (--peer): from its arguments, else from its
// environment.
func (inv invocation) list(name string) []string {
	vs, ok := inv.args[name]
	if !ok {
		v, ok := inv.setting(name)
		if !ok {
			return nil
		}
		vs = []string{v}
	}
	var list []string
	for _, v := range vs {
		list = append(list, strings.Split(v, ",")...)
	}
	return list
}

// podTemplate is the pod template of a workload.
type podTemplate struct {
	what string // "Deployment app"
	spec *corev1.PodTemplateSpec
}

func (p *podTemplate) containers() []*corev1.Container {
	var cs []*corev1.Container
	for i := range p.spec.Spec.InitContainers {
		cs = append(cs, &p.spec.Spec.InitContainers[i])
	}
	for i := range p.spec.Spec.Containers {
		cs = append(cs, &p.spec.Spec.Containers[i])
	}
	return cs
}

func (p *podTemplate) volume(name string) *corev1.Volume {
	for i, v := range p.spec.Spec.Volumes {
		if v.Name == name {
			return &p.spec.Spec.Volumes[i]
		}
	}
	return nil
}

// containerPort resolves a port given by number or by name to the number
// of a container port of the pod; ok is false if the pod has no such port.
func (p *podTemplate) containerPort(port intstr.IntOrString) (int32, bool) {
	for _, c := range p.containers() {
		for _, cp := range c.Ports {
			if port.Type == intstr.String && cp.Name == port.StrVal ||
				port.Type == intstr.Int && cp.ContainerPort == port.IntVal {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// agent is a tunnel container.
type agent struct {
	pod  *podTemplate
	c    *corev1.Container
	what string // "Deployment app, container tunnel-entry"
	role string // "entry" or "exit"
	inv  invocation
}

type checker struct {
	m        *manifests
	help     map[string]*command
	pods     []*podTemplate
	agents   []*agent
	problems []string
}

func (c *checker) addf(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *checker) check() {
	c.checkFiles()
	for _, d := range c.m.deployments {
		p := &podTemplate{what: "Deployment " + d.Name, spec: &d.Spec.Template}
		c.pods = append(c.pods, p)
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || d.Spec.Selector == nil || sel.Empty() || !sel.Matches(labels.Set(p.spec.Labels)) {
			c.addf("%s: its selector does not select its own pods", p.what)
		}
	}
	for _, p := range c.pods {
		c.checkPod(p)
	}
	for _, a := range c.agents {
		c.checkAgent(a)
	}
	for _, s := range c.m.services {
		c.checkService(s)
	}
	c.checkPolicies()
	for _, b := range c.m.budgets {
		if len(c.selected(b.Spec.Selector)) == 0 {
			c.addf("PodDisruptionBudget %s selects no pod", b.Name)
		}
	}
}

// checkFiles checks that kustomization.yaml lists every manifest of the
// directory, that its images name the agents' image, and that README.md
// makes the files its generators read.
func (c *checker) checkFiles() {
	for _, f := range c.m.yamlFiles {
		if f != "kustomization.yaml" && !slices.Contains(c.m.kust.Resources, f) {
			c.addf("%s is not in kustomization.yaml's resources: kubectl apply -k would leave it out", f)
		}
	}
	for _, img := range c.m.kust.Images {
		if img.Name != tunnelImage {
			c.addf("kustomization.yaml: images: %q is no image of the manifests (the agents' is %q)", img.Name, tunnelImage)
		}
	}
	for _, f := range c.m.generatedFiles() {
		// tunnel keygen --out keys/exit writes keys/exit.key and keys/exit.pub.
		want := regexp.QuoteMeta(f)
		if ext := path.Ext(f); ext == ".key" || ext == ".pub" {
			want = `keygen --out ` + regexp.QuoteMeta(strings.TrimSuffix(f, ext)) + `(\s|$)`
		}
		if !regexp.MustCompile(want).MatchString(c.m.readme) {
			c.addf("README.md does not make %s (kustomization.yaml reads it): nothing matches %s", f, want)
		}
	}
}

// checkPod checks every container of p and the references of its volumes
// and environment, and collects its agents.
func (c *checker) checkPod(p *podTemplate) {
	spec := &p.spec.Spec
	if sc := spec.SecurityContext; sc != nil {
		if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot || sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			c.addf("%s: the pod's securityContext allows root (runAsNonRoot, runAsUser)", p.what)
		}
		if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			c.addf("%s: the pod's seccompProfile is %s, want RuntimeDefault", p.what, sc.SeccompProfile.Type)
		}
	}
	for _, v := range spec.Volumes {
		switch {
		case v.Secret != nil:
			c.checkRef(p.what, "Secret", c.m.secrets, v.Secret.SecretName, itemKeys(v.Secret.Items)...)
		case v.ConfigMap != nil:
			c.checkRef(p.what, "ConfigMap", c.m.configMaps, v.ConfigMap.Name, itemKeys(v.ConfigMap.Items)...)
		}
	}
	for _, ctr := range p.containers() {
		what := p.what + ", container " + ctr.Name
		c.checkContainer(what, ctr)
		for _, e := range ctr.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				c.checkRef(what, "Secret", c.m.secrets, r.Name, r.Key)
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				c.checkRef(what, "ConfigMap", c.m.configMaps, r.Name, r.Key)
			}
		}
		for _, e := range ctr.EnvFrom {
			if e.SecretRef != nil {
				c.checkRef(what, "Secret", c.m.secrets, e.SecretRef.Name)
			}
			if e.ConfigMapRef != nil {
				c.checkRef(what, "ConfigMap", c.m.configMaps, e.ConfigMapRef.Name)
			}
		}
		repo, _, _ := strings.Cut(ctr.Image, ":")
		if repo != tunnelImage {
			continue
		}
		if len(ctr.Command) > 0 {
			c.addf("%s: command is set: the image's entrypoint is tunnel; give the command in args", what)
			continue
		}
		if len(ctr.Args) == 0 || (ctr.Args[0] != "entry" && ctr.Args[0] != "exit") {
			c.addf("%s: args %q: want the command, entry or exit, first", what, ctr.Args)
			continue
		}
		a := &agent{pod: p, c: ctr, what: what, role: ctr.Args[0]}
		inv, positional, problems := parseInvocation(c.help[a.role], ctr.Args[1:], ctr.Env)
		a.inv = inv
		for _, pr := range problems {
			c.addf("%s: %s", what, pr)
		}
		if len(positional) > 0 {
			c.addf("%s: arguments %q are not flags", what, positional)
		}
		c.agents = append(c.agents, a)
	}
	if !slices.ContainsFunc(c.agents, func(a *agent) bool { return a.pod == p }) {
		return
	}
	// The agents read TUNNEL_* variables, and need no API access.
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		c.addf("%s: set enableServiceLinks: false (Services named tunnel-… would add TUNNEL_… variables)", p.what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		c.addf("%s: set automountServiceAccountToken: false (the agents do not use the API)", p.what)
	}
}

func itemKeys(items []corev1.KeyToPath) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

// checkRef checks that the generated Secret or ConfigMap name exists and
// has keys.
func (c *checker) checkRef(what, kind string, generated map[string][]string, name string, keys ...string) {
	have, ok := generated[name]
	if !ok {
		c.addf("%s: %s %q is not made by kustomization.yaml", what, kind, name)
		return
	}
	for _, k := range keys {
		if !slices.Contains(have, k) {
			c.addf("%s: %s %q has no key %q (it has %q)", what, kind, name, k, have)
		}
	}
}

// checkContainer checks the securityContext and resources of a container.
// The securityContext is the container's own, so that a container copied
// into another pod keeps it.
func (c *checker) checkContainer(what string, ctr *corev1.Container) {
	sc := ctr.SecurityContext
	if sc == nil {
		c.addf("%s: no securityContext", what)
		return
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		c.addf("%s: securityContext: set runAsNonRoot: true", what)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		c.addf("%s: securityContext: set runAsUser to a user other than root", what)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		c.addf("%s: securityContext: set readOnlyRootFilesystem: true", what)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		c.addf("%s: securityContext: set allowPrivilegeEscalation: false", what)
	}
	if sc.Privileged != nil && *sc.Privileged {
		c.addf("%s: securityContext: privileged", what)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		c.addf("%s: securityContext: capabilities: drop ALL and add none", what)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.addf("%s: securityContext: set seccompProfile type RuntimeDefault", what)
	}
	req, lim := ctr.Resources.Requests, ctr.Resources.Limits
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := req[r]; !ok || q.IsZero() {
			c.addf("%s: no %s request", what, r)
		}
		if l, ok := lim[r]; ok && l.Cmp(req[r]) < 0 {
			c.addf("%s: %s limit %s below its request %s", what, r, l.String(), req.Name(r, "").String())
		}
	}
	if _, ok := lim[corev1.ResourceMemory]; !ok {
		c.addf("%s: no memory limit", what)
	}
}

// checkAgent checks a tunnel container's flags against its pod: ports,
// keys, probes, the grace period.
func (c *checker) checkAgent(a *agent) {
	listen, ok := a.inv.setting("listen")
	if !ok {
		// Its help shows a placeholder, not the default.
		c.addf("%s: give --listen: these checks match its port with the pod's", a.what)
		return
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		c.addf("%s: --listen=%s: %v", a.what, listen, err)
		return
	}
	loopback := host == "localhost" || net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback()
	switch a.role {
	case "exit":
		if loopback {
			c.addf("%s: --listen=%s listens on loopback: the Service cannot reach it", a.what, listen)
		}
		if !slices.ContainsFunc(a.c.Ports, func(p corev1.ContainerPort) bool {
			return strconv.Itoa(int(p.ContainerPort)) == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP)
		}) {
			c.addf("%s: no container port %s (--listen=%s)", a.what, port, listen)
		}
		forward, _ := a.inv.setting("forward")
		c.service(a.what, "--forward", forward)
	case "entry":
		if !loopback {
			c.addf("%s: --listen=%s is not loopback: the application in the same pod reaches 127.0.0.1, and nothing else should", a.what, listen)
		}
		if len(a.c.Ports) > 0 {
			c.addf("%s: declares container ports, but the entry listens on loopback only", a.what)
		}
		// The application stand-in is psql: PGHOST and PGPORT name the entry.
		for _, ctr := range a.pod.containers() {
			for _, e := range ctr.Env {
				if e.Name == "PGPORT" && e.Value != port || e.Name == "PGHOST" && e.Value != host {
					c.addf("%s, container %s: %s=%s, but the entry listens on %s", a.pod.what, ctr.Name, e.Name, e.Value, listen)
				}
			}
		}
		for _, peer := range a.inv.list("peer") {
			// HOST:PORT, or HOST:PORT=KEYS with that exit's own keys.
			hostport, _, _ := strings.Cut(peer, "=")
			if svc, target := c.service(a.what, "--peer", hostport); svc != nil && !c.exitListensOn(svc, target) {
				c.addf("%s: --peer=%s: Service %s sends it to no exit that listens on that port", a.what, peer, svc.Name)
			}
		}
	}
	c.checkKeys(a)
	c.checkProbes(a)
	drain, _ := a.inv.setting("drain-timeout")
	if d, err := time.ParseDuration(drain); err != nil {
		c.addf("%s: --drain-timeout=%s: %v", a.what, drain, err)
	} else if grace := a.pod.spec.Spec.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second <= d {
		c.addf("%s: terminationGracePeriodSeconds (30 unless set) must exceed --drain-timeout=%s, or the drain is cut", a.what, d)
	}
}

// service finds the Service that hostport (NAME:PORT or NAME.NAMESPACE…:PORT)
// names, and the target port of its port PORT.
func (c *checker) service(what, flagName, hostport string) (*corev1.Service, intstr.IntOrString) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		c.addf("%s: %s=%s: %v", what, flagName, hostport, err)
		return nil, intstr.IntOrString{}
	}
	name, _, _ := strings.Cut(host, ".")
	for _, s := range c.m.services {
		if s.Name != name {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if strconv.Itoa(int(sp.Port)) == port {
				return s, serviceTarget(s, sp)
			}
		}
		c.addf("%s: %s=%s: Service %s has no port %s", what, flagName, hostport, s.Name, port)
		return nil, intstr.IntOrString{}
	}
	c.addf("%s: %s=%s: no Service %q in the manifests", what, flagName, hostport, name)
	return nil, intstr.IntOrString{}
}

// exitListensOn reports whether the Service's target port is the --listen
// port of an exit in a pod it selects.
func (c *checker) exitListensOn(svc *corev1.Service, target intstr.IntOrString) bool {
	for _, a := range c.agents {
		if a.role != "exit" || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(a.pod.spec.Labels)) {
			continue
		}
		n, ok := a.pod.containerPort(target)
		listen, _ := a.inv.setting("listen")
		if _, port, _ := net.SplitHostPort(listen); ok && strconv.Itoa(int(n)) == port {
			return true
		}
	}
	return false
}

// mount finds the volume that holds file (or directory) p in a's container,
// and p's path inside it ("" for the volume's root).
func (a *agent) mount(p string) (*corev1.VolumeMount, *corev1.Volume, string) {
	for i, vm := range a.c.VolumeMounts {
		rel, ok := strings.CutPrefix(p, strings.TrimSuffix(vm.MountPath, "/"))
		if ok && (rel == "" || strings.HasPrefix(rel, "/")) {
			return &a.c.VolumeMounts[i], a.pod.volume(vm.Name), strings.TrimPrefix(rel, "/")
		}
	}
	return nil, nil, ""
}

// checkKeys checks that --key is a key of a Secret, mounted read-only, that
// the agent's user may read it and that the agent accepts its mode; and that
// the public keys (--peer-key, --authorized-keys) are a mounted directory of
// .pub or .pem files.
func (c *checker) checkKeys(a *agent) {
	keyPath, _ := a.inv.setting("key")
	vm, vol, rel := a.mount(keyPath)
	switch {
	case vm == nil || vol == nil:
		c.addf("%s: --key=%s is not on a volume mounted in the container", a.what, keyPath)
	case vol.Secret == nil:
		c.addf("%s: --key=%s is not from a Secret", a.what, keyPath)
	case vm.SubPath != "":
		c.addf("%s: --key=%s is mounted with subPath, which never sees the Secret change", a.what, keyPath)
	default:
		if !vm.ReadOnly {
			c.addf("%s: mount the key volume %s readOnly", a.what, vm.Name)
		}
		key, mode := rel, int32(corev1.SecretVolumeSourceDefaultMode)
		if vol.Secret.DefaultMode != nil {
			mode = *vol.Secret.DefaultMode
		}
		if len(vol.Secret.Items) > 0 {
			key = ""
			for _, it := range vol.Secret.Items {
				if it.Path == rel {
					key = it.Key
					if it.Mode != nil {
						mode = *it.Mode
					}
				}
			}
		}
		if key == "" || !slices.Contains(c.m.secrets[vol.Secret.SecretName], key) {
			c.addf("%s: --key=%s: Secret %s has no key for %s (it has %q)", a.what, keyPath, vol.Secret.SecretName, rel, c.m.secrets[vol.Secret.SecretName])
		}
		c.checkKeyMode(a, keyPath, os.FileMode(mode))
	}
	if a.role == "exit" {
		keys, _ := a.inv.setting("authorized-keys")
		c.checkPublicKeys(a, "--authorized-keys=", keys)
		return
	}
	peerKey, shared := a.inv.setting("peer-key")
	if shared {
		c.checkPublicKeys(a, "--peer-key=", peerKey)
	}
	for _, peer := range a.inv.list("peer") {
		hostport, keys, own := strings.Cut(peer, "=")
		switch {
		case own:
			c.checkPublicKeys(a, "--peer="+hostport+"=", keys)
		case !shared:
			c.addf("%s: --peer=%s names no keys of its own (HOST:PORT=KEYS), and there is no --peer-key", a.what, peer)
		}
	}
}

// checkPublicKeys checks that pubPath, given as what, is a mounted
// directory of .pub or .pem files.
func (c *checker) checkPublicKeys(a *agent, what, pubPath string) {
	vm, vol, rel := a.mount(pubPath)
	if vm == nil || vol == nil || rel != "" || vm.SubPath != "" {
		c.addf("%s: %s%s is not a volume mounted in the container (a directory of one .pub file per key)", a.what, what, pubPath)
		return
	}
	var keys []string
	switch {
	case vol.ConfigMap != nil && len(vol.ConfigMap.Items) == 0:
		keys = c.m.configMaps[vol.ConfigMap.Name]
	case vol.Secret != nil && len(vol.Secret.Items) == 0:
		keys = c.m.secrets[vol.Secret.SecretName]
	default:
		c.addf("%s: %s%s: mount a whole ConfigMap or Secret, without items, so that a key added to it appears as a file", a.what, what, pubPath)
		return
	}
	if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasSuffix(k, ".pub") || strings.HasSuffix(k, ".pem") }) {
		c.addf("%s: %s%s: its volume has no .pub or .pem file (keys %q), which the agent reads from a directory", a.what, what, pubPath, keys)
	}
}

// checkKeyMode checks a Secret file's mode as the kubelet makes it: owned by
// root, and with an fsGroup, of that group and readable by it.
func (c *checker) checkKeyMode(a *agent, keyPath string, mode os.FileMode) {
	psc := a.pod.spec.Spec.SecurityContext
	var fsGroup *int64
	if psc != nil {
		fsGroup = psc.FSGroup
	}
	if fsGroup != nil {
		mode |= 0o440
	}
	uid := int64(-1)
	if sc := a.c.SecurityContext; sc != nil && sc.RunAsUser != nil {
		uid = *sc.RunAsUser
	} else if psc != nil && psc.RunAsUser != nil {
		uid = *psc.RunAsUser
	}
	// fsGroup is a supplemental group of every container of the pod.
	if uid != 0 && mode&0o004 == 0 && (fsGroup == nil || mode&0o040 == 0) {
		c.addf("%s: --key=%s: user %d cannot read it (mode %04o, owner root%s)", a.what, keyPath, uid, mode, map[bool]string{true: "", false: ", no fsGroup"}[fsGroup != nil])
	}
	allow, _ := a.inv.setting("allow-insecure-key-perms")
	if ok, _ := strconv.ParseBool(allow); !ok && mode&0o077 != 0 {
		c.addf("%s: --key=%s has mode %04o, which the agent refuses without --allow-insecure-key-perms", a.what, keyPath, mode)
	}
}

// checkProbes checks that the agent has a liveness probe on /healthz, a
// readiness probe on /readyz and perhaps a startup probe on /healthz, each
// asking its status endpoint: `tunnel healthcheck` in the container, or an
// httpGet from the kubelet.
func (c *checker) checkProbes(a *agent) {
	status, ok := a.inv.setting("status-addr")
	if !ok || status == "" {
		c.addf("%s: no --status-addr or TUNNEL_STATUS_ADDR: the probes need the status endpoint", a.what)
		return
	}
	host, port, err := net.SplitHostPort(status)
	if err != nil {
		c.addf("%s: status address %s: %v", a.what, status, err)
		return
	}
	if host == "" {
		host = "127.0.0.1" // a port alone means loopback
	}
	for _, p := range []struct {
		kind     string
		probe    *corev1.Probe
		path     string
		required bool
	}{
		{"livenessProbe", a.c.LivenessProbe, "/healthz", true},
		{"readinessProbe", a.c.ReadinessProbe, "/readyz", true},
		{"startupProbe", a.c.StartupProbe, "/healthz", false},
	} {
		what := a.what + ": " + p.kind
		switch {
		case p.probe == nil:
			if p.required {
				c.addf("%s: no %s", a.what, p.kind)
			}
		case p.probe.Exec != nil:
			c.checkHealthcheck(what, a, p.probe, p.path, host, port)
		case p.probe.HTTPGet != nil:
			g := p.probe.HTTPGet
			n, ok := int32(0), true
			if g.Port.Type == intstr.String {
				n, ok = a.pod.containerPort(g.Port)
			} else {
				n = g.Port.IntVal
			}
			if !ok || strconv.Itoa(int(n)) != port {
				c.addf("%s: asks port %s, but the status endpoint listens on %s", what, g.Port.String(), net.JoinHostPort(host, port))
			}
			if g.Path != p.path {
				c.addf("%s: asks %s, want %s", what, g.Path, p.path)
			}
			if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
				c.addf("%s: the kubelet asks the pod's IP, but the status endpoint listens on %s: use `tunnel healthcheck`, or 0.0.0.0", what, status)
			}
		default:
			c.addf("%s: ask the status endpoint with `tunnel healthcheck` or httpGet", what)
		}
	}
}

// checkHealthcheck checks an exec probe: `tunnel healthcheck [flags] [PATH|URL]`,
// run in the agent's container with its environment (not its arguments).
func (c *checker) checkHealthcheck(what string, a *agent, probe *corev1.Probe, path, host, port string) {
	cmd := probe.Exec.Command
	if len(cmd) < 2 || cmd[0] != "tunnel" || cmd[1] != "healthcheck" {
		c.addf("%s: runs %q, want tunnel healthcheck", what, cmd)
		return
	}
	hc, positional, problems := parseInvocation(c.help["healthcheck"], cmd[2:], a.c.Env)
	for _, p := range problems {
		c.addf("%s: %s", what, p)
	}
	target := "/readyz"
	if len(positional) > 1 {
		c.addf("%s: more than one URL: %q", what, positional)
	} else if len(positional) == 1 {
		target = positional[0]
	}
	var askHost, askPort, askPath string
	if strings.Contains(target, "://") {
		u, err := url.Parse(target)
		if err != nil {
			c.addf("%s: %v", what, err)
			return
		}
		askHost, askPort, askPath = u.Hostname(), u.Port(), u.Path
	} else {
		addr, ok := hc.setting("status-addr")
		if !ok || addr == "" {
			c.addf("%s: tunnel healthcheck has no address to ask: set TUNNEL_STATUS_ADDR in the container's env (it does not see the agent's args)", what)
			return
		}
		var err error
		if askHost, askPort, err = net.SplitHostPort(addr); err != nil {
			c.addf("%s: --status-addr %s: %v", what, addr, err)
			return
		}
		if ip := net.ParseIP(askHost); askHost == "" || ip != nil && ip.IsUnspecified() {
			askHost = "127.0.0.1"
		}
		askPath = target
	}
	if ip := net.ParseIP(host); askPort != port || askHost != host && (ip == nil || !ip.IsUnspecified()) {
		c.addf("%s: tunnel healthcheck asks %s, but the status endpoint listens on %s", what, net.JoinHostPort(askHost, askPort), net.JoinHostPort(host, port))
	}
	if askPath != path {
		c.addf("%s: asks %s, want %s", what, askPath, path)
	}
	timeout, _ := hc.setting("timeout")
	d, err := time.ParseDuration(timeout)
	if err != nil {
		c.addf("%s: --timeout=%s: %v", what, timeout, err)
	}
	limit := probe.TimeoutSeconds
	if limit == 0 {
		limit = 1
	}
	if time.Duration(limit)*time.Second < d {
		c.addf("%s: timeoutSeconds %d is shorter than tunnel healthcheck's --timeout=%s", what, limit, d)
	}
}

// checkService checks that a Service selects pods and that each of its
// ports reaches a container port of every pod it selects.
func (c *checker) checkService(s *corev1.Service) {
	if len(s.Spec.Selector) == 0 {
		c.addf("Service %s has no selector", s.Name)
		return
	}
	var pods []*podTemplate
	for _, p := range c.pods {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(p.spec.Labels)) {
			pods = append(pods, p)
		}
	}
	if len(pods) == 0 {
		c.addf("Service %s selects no pod", s.Name)
	}
	for _, sp := range s.Spec.Ports {
		for _, p := range pods {
			target := serviceTarget(s, sp)
			if _, ok := p.containerPort(target); !ok {
				c.addf("Service %s port %d: targetPort %q is no container port of %s", s.Name, sp.Port, target.String(), p.what)
			}
			if n, ok := p.containerPort(sp.TargetPort); ok && s.Spec.ClusterIP == corev1.ClusterIPNone && n != sp.Port {
				c.addf("Service %s port %d: it is headless, so clients dial the pods on port %d itself, but its targetPort is %d", s.Name, sp.Port, sp.Port, n)
			}
		}
	}
}

// serviceTarget is the pod port that a client of port sp of Service s
// reaches: its targetPort (its port if none), or for a headless Service,
// whose name resolves to the pods' own addresses, the port itself.
func serviceTarget(s *corev1.Service, sp corev1.ServicePort) intstr.IntOrString {
	if s.Spec.ClusterIP == corev1.ClusterIPNone || sp.TargetPort == (intstr.IntOrString{}) {
		return intstr.FromInt32(sp.Port)
	}
	return sp.TargetPort
}

// selected are the pods a label selector selects.
func (c *checker) selected(ls *metav1.LabelSelector) []*podTemplate {
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil || ls == nil {
		return nil
	}
	var pods []*podTemplate
	for _, p := range c.pods {
		if sel.Matches(labels.Set(p.spec.Labels)) {
			pods = append(pods, p)
		}
	}
	return pods
}

// checkPolicies checks that NetworkPolicies admit to each exit only its
// entries' pods, on its --listen port only, and to each exit's backend only
// the exits, on the backend's port only.
func (c *checker) checkPolicies() {
	for _, x := range c.agents {
		if x.role != "exit" {
			continue
		}
		listen, _ := x.inv.setting("listen")
		_, port, _ := net.SplitHostPort(listen)
		var entries []*podTemplate
		for _, e := range c.agents {
			if e.role == "entry" && slices.ContainsFunc(e.inv.list("peer"), func(peer string) bool {
				hostport, _, _ := strings.Cut(peer, "=")
				return c.reaches(hostport, x.pod)
			}) {
				entries = append(entries, e.pod)
			}
		}
		c.checkIngress(x.pod, port, entries)
		forward, _ := x.inv.setting("forward")
		for _, backend := range c.pods {
			if c.reaches(forward, backend) {
				n, _ := c.targetPort(forward, backend)
				c.checkIngress(backend, strconv.Itoa(int(n)), []*podTemplate{x.pod})
			}
		}
	}
}

// reaches reports whether hostport names a Service that selects pod.
func (c *checker) reaches(hostport string, pod *podTemplate) bool {
	_, ok := c.targetPort(hostport, pod)
	return ok
}

// targetPort is the container port of pod that hostport (a Service's name
// and port) reaches.
func (c *checker) targetPort(hostport string, pod *podTemplate) (int32, bool) {
	host, port, _ := net.SplitHostPort(hostport)
	name, _, _ := strings.Cut(host, ".")
	for _, s := range c.m.services {
		if s.Name != name || !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(pod.spec.Labels)) {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if strconv.Itoa(int(sp.Port)) == port {
				return pod.containerPort(serviceTarget(s, sp))
			}
		}
	}
	return 0, false
}

// checkIngress checks that the NetworkPolicies selecting target admit TCP
// to port only, from clients only (pods of this namespace).
func (c *checker) checkIngress(target *podTemplate, port string, clients []*podTemplate) {
	var rules []networkingv1.NetworkPolicyIngressRule
	for _, pol := range c.m.policies {
		sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
		ingress := len(pol.Spec.PolicyTypes) == 0 || slices.Contains(pol.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		if err == nil && ingress && sel.Matches(labels.Set(target.spec.Labels)) {
			rules = append(rules, pol.Spec.Ingress...)
		}
	}
	if len(rules) == 0 {
		c.addf("no NetworkPolicy selects %s for ingress: every pod may connect to it", target.what)
		return
	}
	for i, r := range rules {
		if len(r.From) == 0 {
			c.addf("%s: NetworkPolicy ingress rule %d admits every source", target.what, i+1)
		}
		if len(r.Ports) == 0 {
			c.addf("%s: NetworkPolicy ingress rule %d admits every port, not only %s", target.what, i+1, port)
		}
		for _, p := range r.Ports {
			n, ok := int32(0), p.Port != nil
			if ok && p.Port.Type == intstr.String {
				n, ok = target.containerPort(*p.Port)
			} else if ok {
				n = p.Port.IntVal
			}
			tcp := p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP
			if !ok || !tcp || p.EndPort != nil || strconv.Itoa(int(n)) != port {
				what := "every port"
				if p.Port != nil {
					what = "port " + p.Port.String()
				}
				c.addf("%s: a NetworkPolicy admits %s, not only TCP %s", target.what, what, port)
			}
		}
	}
	for _, client := range clients {
		admitted := slices.ContainsFunc(rules, func(r networkingv1.NetworkPolicyIngressRule) bool {
			return slices.ContainsFunc(r.From, func(peer networkingv1.NetworkPolicyPeer) bool {
				return peer.NamespaceSelector == nil && peer.IPBlock == nil && slices.Contains(c.selected(peer.PodSelector), client)
			})
		})
		if !admitted {
			c.addf("%s: no rule admits %s, its client", target.what, client.what)
		}
	}
}
