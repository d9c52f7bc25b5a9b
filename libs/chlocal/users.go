package chlocal

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The ClickHouse users of a Modelport installation.
const (
	// BillingUser is billing's: it inserts and selects, and may not change
	// the schema (on 18.16: allow_ddl 0; on current releases: no DROP).
	BillingUser = "modelport_billing"
	// AnalystUser is the analysts': read-only.
	AnalystUser = "modelport_analyst"
)

// Role is what a user may do.
type Role int

// Roles.
const (
	// Writer inserts and selects; it may not create, alter or drop
	// anything.
	Writer Role = iota + 1
	// Reader only selects.
	Reader
)

// User is a ClickHouse account in the users file of a local server.
type User struct {
	Name, Password string
	Role           Role
	// Databases are the only ones it may use; none means all.
	Databases []string
}

// UsersXML renders a users file in the format ClickHouse 18.16 reads (and
// current releases still do): the passwordless default user, for loopback
// clients alone, which owns the schema, and the given users, each with
// its password's SHA-256, a profile for its role and its databases.
func UsersXML(users []User) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0"?>
<!-- Written by Modelport (libs/chlocal) at each start. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
        <!-- Inserts and selects; no CREATE, ALTER, DROP, RENAME or TRUNCATE. -->
        <modelport_writer>
            <allow_ddl>0</allow_ddl>
        </modelport_writer>
        <!-- Selects only, and no setting changed in the session. -->
        <modelport_reader>
            <readonly>1</readonly>
        </modelport_reader>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
`)
	for _, u := range users {
		sum := sha256.Sum256([]byte(u.Password))
		profile := "modelport_writer"
		if u.Role == Reader {
			profile = "modelport_reader"
		}
		fmt.Fprintf(&b, "        <%s>\n            <password_sha256_hex>%s</password_sha256_hex>\n", u.Name, hex.EncodeToString(sum[:]))
		b.WriteString("            <networks>\n                <ip>::/0</ip>\n            </networks>\n")
		fmt.Fprintf(&b, "            <profile>%s</profile>\n            <quota>default</quota>\n", profile)
		if len(u.Databases) > 0 {
			b.WriteString("            <allow_databases>\n")
			for _, db := range u.Databases {
				fmt.Fprintf(&b, "                <database>%s</database>\n", db)
			}
			b.WriteString("            </allow_databases>\n")
		}
		fmt.Fprintf(&b, "        </%s>\n", u.Name)
	}
	b.WriteString(`    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
`)
	return b.String()
}

// ModelportUsers returns billing's and the analysts' users for database
// db, with the passwords kept in dir (<user>.password, readable by their
// owner alone), made on first use and kept after.
func ModelportUsers(dir, db string) ([]User, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var users []User
	for _, u := range []User{{Name: BillingUser, Role: Writer}, {Name: AnalystUser, Role: Reader}} {
		path := filepath.Join(dir, u.Name+".password")
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			pw := make([]byte, 24)
			_, _ = rand.Read(pw)
			b = []byte(base64.RawURLEncoding.EncodeToString(pw))
			err = os.WriteFile(path, append(b, '\n'), 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("clickhouse password %s: %w", path, err)
		}
		u.Password = strings.TrimSpace(string(b))
		u.Databases = []string{db}
		users = append(users, u)
	}
	return users, nil
}
