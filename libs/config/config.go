// Package config reads settings from the environment (or any getenv-shaped
// lookup) with working defaults. Each service declares its own Config struct
// and fills it with these helpers.
package config

import (
	"fmt"
	"strconv"
	"time"
)

// Getenv looks a setting up by name; os.Getenv satisfies it.
type Getenv func(string) string

// String returns the setting or def when it is empty.
func String(getenv Getenv, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// Int returns the setting as an int, def when empty, and an error naming the
// setting when it is not a number.
func Int(getenv Getenv, name string, def int) (int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not an integer", name, v)
	}
	return n, nil
}

// Duration returns the setting as a time.Duration ("1.5s", "200ms").
func Duration(getenv Getenv, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration", name, v)
	}
	return d, nil
}

// Bool returns the setting as a bool ("1", "true", "yes").
func Bool(getenv Getenv, name string, def bool) bool {
	switch getenv(name) {
	case "":
		return def
	case "1", "true", "TRUE", "True", "yes", "on":
		return true
	default:
		return false
	}
}

// Chain returns a Getenv that consults each lookup in order and returns the
// first non-empty value. The all-in-one binary layers its defaults this way.
func Chain(lookups ...Getenv) Getenv {
	return func(name string) string {
		for _, l := range lookups {
			if v := l(name); v != "" {
				return v
			}
		}
		return ""
	}
}

// Map is a Getenv over a fixed map, handy in tests.
func Map(m map[string]string) Getenv {
	return func(name string) string { return m[name] }
}
