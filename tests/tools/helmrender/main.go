// helmrender renders a Helm chart the way `helm template` does, for the tests: helm itself has
// no Debian 12 package, but its template engine is Go's text/template with the sprig functions
// (Debian: golang-github-masterminds-sprig-dev) and a few functions of its own (include, tpl,
// required, toYaml, fromYaml, toToml is not used), which are written here as Helm writes them
// (helm/pkg/engine/funcs.go). Values are read the way Helm reads them: YAML through JSON, so
// every number is a float64, and -f files merged over the chart's values.yaml (maps merged key
// by key, a null deletes the key, lists replaced whole).
//
//	helmrender [-name RELEASE] [-namespace NS] [-f values.yaml ...] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v2"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// readYAML reads a YAML file as Helm does: converted to JSON, then decoded, so maps have
// string keys and numbers are float64.
func readYAML(path string) (map[string]interface{}, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc interface{}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	j, err := json.Marshal(jsonable(doc))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]interface{}{}
	if string(j) == "null" {
		return out, nil
	}
	if err := json.Unmarshal(j, &out); err != nil {
		return nil, fmt.Errorf("%s: not a map: %w", path, err)
	}
	return out, nil
}

func jsonable(v interface{}) interface{} {
	switch x := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, val := range x {
			m[fmt.Sprint(k)] = jsonable(val)
		}
		return m
	case []interface{}:
		for i := range x {
			x[i] = jsonable(x[i])
		}
		return x
	}
	return v
}

// coalesce merges user values over the chart's: maps key by key, null deletes.
func coalesce(dst, src map[string]interface{}) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			coalesce(dm, sm)
		} else {
			dst[k] = v
		}
	}
}

// toYAML is Helm's: sigs.k8s.io/yaml (JSON, then YAML with the keys in JSON's sorted order).
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var ms yaml.MapSlice
	var doc interface{} = &ms
	if len(j) == 0 || j[0] != '{' {
		var any interface{}
		doc = &any
	}
	if err := yaml.Unmarshal(j, doc); err != nil {
		return ""
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	var doc interface{}
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		m["Error"] = err.Error()
		return m
	}
	if x, ok := jsonable(doc).(map[string]interface{}); ok {
		return x
	}
	return m
}

func main() {
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	var files valueFiles
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helmrender [-name R] [-namespace NS] [-f values.yaml] CHART")
		os.Exit(2)
	}
	if err := render(flag.Arg(0), *name, *namespace, files); err != nil {
		fmt.Fprintln(os.Stderr, "helmrender:", err)
		os.Exit(1)
	}
}

func render(dir, name, namespace string, files []string) error {
	meta, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range files {
		user, err := readYAML(f)
		if err != nil {
			return err
		}
		coalesce(values, user)
	}
	chartName := fmt.Sprint(meta["name"])
	chart := map[string]interface{}{"Name": meta["name"], "Version": meta["version"],
		"AppVersion": meta["appVersion"], "Description": meta["description"],
		"Type": meta["type"], "KubeVersion": meta["kubeVersion"], "APIVersion": meta["apiVersion"]}
	release := map[string]interface{}{"Name": name, "Namespace": namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	included := map[string]int{}
	funcs["include"] = func(n string, data interface{}) (string, error) {
		if included[n] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", n)
		}
		included[n]++
		defer func() { included[n]-- }()
		var buf strings.Builder
		err := t.ExecuteTemplate(&buf, n, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		c, err = c.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf strings.Builder
		err = c.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	t.Funcs(funcs)

	tdir := filepath.Join(dir, "templates")
	entries, err := os.ReadDir(tdir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		tname := chartName + "/templates/" + e.Name()
		src, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		if err != nil {
			return err
		}
		if _, err := t.New(tname).Parse(string(src)); err != nil {
			return err
		}
		names = append(names, tname)
	}
	sort.Strings(names)
	var out bytes.Buffer
	for _, tname := range names {
		base := filepath.Base(tname)
		if strings.HasPrefix(base, "_") || !(strings.HasSuffix(base, ".yaml") ||
			strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".tpl")) ||
			strings.HasSuffix(base, ".tpl") {
			continue
		}
		data := map[string]interface{}{"Values": values, "Chart": chart, "Release": release,
			"Capabilities": map[string]interface{}{},
			"Template": map[string]interface{}{"Name": tname, "BasePath": chartName + "/templates"}}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, tname, data); err != nil {
			return err
		}
		s := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(s) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, s)
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}
