package envoy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Object is one non-empty document of a multi-document Kubernetes YAML file.
type Object struct {
	Index      int // position among the file's non-empty documents, from 0
	APIVersion string
	Kind       string
	Name       string
	Namespace  string
	// Doc is the whole document as JSON values; numbers are json.Number so they re-encode exactly.
	Doc map[string]any
}

// Ref names the object for messages: "Kind namespace/name".
func (o Object) Ref() string { return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name) }

// SplitDocuments splits a YAML stream at its "---" separator lines. Documents that hold only comments or
// whitespace come back too; ParseObjects drops them.
func SplitDocuments(stream []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(stream))
	sc.Buffer(make([]byte, 0, 64*1024), len(stream)+1)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimRight(line, " \t\r")
		switch {
		case trimmed == "---" || strings.HasPrefix(trimmed, "--- "):
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			// "--- # comment" or "--- {inline: doc}": keep what follows the marker.
			if rest := strings.TrimSpace(strings.TrimPrefix(trimmed, "---")); rest != "" && !strings.HasPrefix(rest, "#") {
				cur.WriteString(rest + "\n")
			}
		case trimmed == "...":
			// document end marker: the next document starts after the next "---"
		default:
			cur.WriteString(line + "\n")
		}
	}
	return append(docs, cur.Bytes())
}

// ParseObjects decodes every non-empty document of a multi-document YAML file.
func ParseObjects(stream []byte) ([]Object, error) {
	var objs []Object
	for i, doc := range SplitDocuments(stream) {
		j, err := toJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("envoy: document %d: %w", i, err)
		}
		if string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("envoy: document %d: not a mapping: %w", i, err)
		}
		meta, _ := m["metadata"].(map[string]any)
		str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
		objs = append(objs, Object{
			Index:      len(objs),
			APIVersion: str(m, "apiVersion"),
			Kind:       str(m, "kind"),
			Name:       str(meta, "name"),
			Namespace:  str(meta, "namespace"),
			Doc:        m,
		})
	}
	return objs, nil
}

// FindObject returns the first object of the given kind, namespace and name.
func FindObject(objs []Object, kind, namespace, name string) (Object, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Namespace == namespace && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}
