package bench

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

//go:embed scenarios/*.yaml
var builtinFS embed.FS

// BuiltinNames lists the built-in scenarios in the order `all` runs them.
var BuiltinNames = []string{"marketing-burst", "otp-flood", "otp-during-burst", "alert-storm", "provider-faults", "scheduled-campaign"}

// Builtin returns a built-in scenario by name; its YAML is in
// bench/scenarios/ and doubles as an example of the scenario format.
func Builtin(name string) (Scenario, error) {
	if !slices.Contains(BuiltinNames, name) {
		return Scenario{}, fmt.Errorf("no built-in scenario %q; built in: %s", name, strings.Join(BuiltinNames, ", "))
	}
	b, err := fs.ReadFile(builtinFS, path.Join("scenarios", name+".yaml"))
	if err != nil {
		return Scenario{}, err
	}
	return ParseScenario(bytes.NewReader(b))
}
