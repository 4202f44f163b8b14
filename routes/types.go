package routes

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// checkTypes compares every value of a config decoded into plain maps
// with the field of Config it is meant for, before the typed decode
// (which stops at the first mismatch with a message about Go types).
// Each mismatch becomes an Error on its line that shows the line to
// write instead; the bad value is removed from raw, so the rest of the
// file can still be decoded and checked in the same pass.
func checkTypes(raw map[string]any, idx lineIndex) Errors {
	var errs Errors
	checkTable(raw, reflect.TypeOf(Config{}), "", "", idx, &errs)
	return errs
}

var (
	durationType      = reflect.TypeOf(Duration(0))
	tomlUnmarshaler   = reflect.TypeOf((*toml.Unmarshaler)(nil)).Elem()
	textUnmarshaler   = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
	maxDurationSuffix = 20 // longest value quoted back in a suggestion
)

// checkTable checks the keys of one table against struct type t. path
// is the key path for line lookup ("route.0"), where the prefix users
// read in a message ("[timeouts] ", "route #1: ").
func checkTable(m map[string]any, t reflect.Type, path, where string, idx lineIndex, errs *Errors) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		v, ok := m[name]
		if !ok {
			continue
		}
		keyPath := name
		if path != "" {
			keyPath = path + "." + name
		}
		// bad reports the value; fix is what the message tells the user
		// to write, checked further as if written (nil: drop the key)
		bad := func(fix any, format string, args ...any) {
			*errs = append(*errs, &Error{Line: idx.key(keyPath), Msg: where + fmt.Sprintf(format, args...), typeErr: true})
			if fix != nil {
				m[name] = fix
			} else {
				delete(m, name)
			}
		}
		checkValue(v, f.Type, name, keyPath, bad, idx, errs)
	}
}

func checkValue(v any, t reflect.Type, name, keyPath string, bad func(any, string, ...any), idx lineIndex, errs *Errors) {
	pt := reflect.PointerTo(t)
	switch {
	case t == durationType:
		checkDuration(v, name, bad)
		return
	case pt.Implements(tomlUnmarshaler) || t.Implements(tomlUnmarshaler):
		return // decodes (and reports) itself
	case pt.Implements(textUnmarshaler) || t.Implements(textUnmarshaler):
		if _, ok := v.(string); !ok {
			bad(fixString(v), "%s = %s must be a string in quotes: write %s = %q", name, show(v), name, plain(v))
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		checkValue(v, t.Elem(), name, keyPath, bad, idx, errs)
	case reflect.String:
		if _, ok := v.(string); !ok {
			if isScalar(v) {
				bad(plain(v), "%s = %s must be a string in quotes: write %s = %q", name, show(v), name, plain(v))
			} else {
				bad(nil, "%s must be a string in quotes, like %s = \"...\"", name, name)
			}
		}
	case reflect.Bool:
		switch x := v.(type) {
		case bool:
		case string:
			if b, err := strconv.ParseBool(x); err == nil {
				bad(b, "%s = %q must be true or false without quotes: write %s = %t", name, x, name, b)
			} else {
				bad(nil, "%s = %q: want true or false", name, x)
			}
		default:
			bad(nil, "%s = %s: want true or false", name, show(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		switch x := v.(type) {
		case int64:
		case string:
			if n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64); err == nil {
				bad(n, "%s = %q must be a number without quotes: write %s = %d", name, x, name, n)
			} else {
				bad(nil, "%s = %q: want a whole number, like %s = 4", name, x, name)
			}
		default:
			bad(nil, "%s = %s: want a whole number, like %s = 4", name, show(v), name)
		}
	case reflect.Float32, reflect.Float64:
		switch v.(type) {
		case float64, int64:
		default:
			bad(nil, "%s = %s: want a number", name, show(v))
		}
	case reflect.Slice:
		el := t.Elem()
		if el.Kind() == reflect.Struct {
			checkTables(v, el, name, keyPath, bad, idx, errs)
			return
		}
		if el.Kind() != reflect.String {
			return
		}
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				if _, ok := e.(string); !ok {
					parts := make([]string, len(x))
					fix := make([]any, len(x))
					for i, e := range x {
						parts[i] = strconv.Quote(plain(e))
						fix[i] = plain(e)
					}
					bad(fix, "%s: every entry must be a string in quotes: write %s = [%s]", name, name, strings.Join(parts, ", "))
					return
				}
			}
		case string:
			parts := strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' })
			if len(parts) == 0 {
				bad([]any{}, "%s = %q must be a list: write %s = []", name, x, name)
				return
			}
			fix := make([]any, len(parts))
			for i := range parts {
				fix[i] = parts[i]
				parts[i] = strconv.Quote(parts[i])
			}
			bad(fix, "%s = %q must be a list, even of one: write %s = [%s]", name, x, name, strings.Join(parts, ", "))
		default:
			bad(nil, "%s = %s must be a list of strings, like %s = [\"...\"]", name, show(v), name)
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			bad(nil, "%s must be a table: write [%s] on a line of its own, with its keys below it", name, keyPath)
			return
		}
		checkTable(m, t, keyPath, "["+keyPath+"] ", idx, errs)
	}
}

// checkTables checks an array of tables such as [[route]].
func checkTables(v any, el reflect.Type, name, keyPath string, bad func(any, string, ...any), idx lineIndex, errs *Errors) {
	var list []map[string]any
	switch x := v.(type) {
	case []map[string]any:
		list = x
	case []any:
		for _, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				bad(nil, "%s must be tables: write [[%s]] on a line of its own before each one's keys", name, keyPath)
				return
			}
			list = append(list, m)
		}
	case map[string]any:
		list = []map[string]any{x}
		bad(list, "[%s] takes double brackets: write [[%s]] (one per %s)", keyPath, keyPath, name)
	default:
		bad(nil, "%s = %s: write [[%s]] on a line of its own, with its keys below it", name, show(v), keyPath)
		return
	}
	for i, m := range list {
		where := fmt.Sprintf("[[%s]] #%d: ", keyPath, i+1)
		if keyPath == "route" {
			where = fmt.Sprintf("route #%d: ", i+1) // as validate says it
		}
		checkTable(m, el, fmt.Sprintf("%s.%d", keyPath, i), where, idx, errs)
	}
}

// checkDuration accepts "10s", "1m30s"; a bare number, or a number in
// quotes without a unit, is answered with the same value in seconds.
func checkDuration(v any, name string, bad func(any, string, ...any)) {
	switch x := v.(type) {
	case string:
		if _, err := time.ParseDuration(x); err == nil {
			return
		}
		s := strings.TrimSpace(x)
		if _, err := strconv.ParseFloat(s, 64); err == nil && len(s) <= maxDurationSuffix {
			bad(s+"s", "%s = %q has no unit: write %s = \"%ss\" (units: ms, s, m, h)", name, x, name, s)
			return
		}
		bad(nil, "%s = %q is not a duration: write it like %s = \"30s\" or \"1m30s\" (units: ms, s, m, h)", name, x, name)
	case int64:
		if x == 0 {
			return // "0" is a duration, and 0 always decoded as one
		}
		bad(fmt.Sprintf("%ds", x), "%s = %d is not a duration: write %s = \"%ds\" (units: ms, s, m, h)", name, x, name, x)
	case float64:
		bad(fmt.Sprintf("%vs", x), "%s = %v is not a duration: write %s = \"%vs\" (units: ms, s, m, h)", name, x, name, x)
	default:
		bad(nil, "%s = %s is not a duration: write it like %s = \"30s\" (units: ms, s, m, h)", name, show(v), name)
	}
}

func isScalar(v any) bool {
	switch v.(type) {
	case string, int64, float64, bool:
		return true
	}
	return false
}

// plain is a scalar as a string ("10" for 10).
func plain(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// fixString is a scalar as a string, or nil (drop) for anything else.
func fixString(v any) any {
	if isScalar(v) {
		return plain(v)
	}
	return nil
}

// show is a value as TOML would print it, cut short.
func show(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = strconv.Quote(x)
	case []any, []map[string]any:
		s = "[...]"
	case map[string]any:
		s = "{...}"
	default:
		s = fmt.Sprint(x)
	}
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}
