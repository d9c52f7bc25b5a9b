package access

import (
	"fmt"
	"strings"
)

// NKeyVar is the environment variable through which a nats-server
// configuration (AuthorizationConf with EnvNKeys) receives an identity's
// public NKey: MODELPORT_NKEY_<IDENTITY>, upper case, dashes as
// underscores.
func NKeyVar(name string) string {
	return "MODELPORT_NKEY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// EnvNKeys maps every identity to a reference to its NKeyVar, for a
// configuration whose public keys come from the server's environment.
func EnvNKeys() map[string]string {
	m := map[string]string{}
	for _, name := range Names() {
		m[name] = "$" + NKeyVar(name)
	}
	return m
}

// AuthorizationConf renders the authorization block of a nats-server
// configuration that admits the identities of the table, each by its NKey
// with its permissions, and no one else. nkeys maps each identity to its
// public key, or to a $VARIABLE the server resolves from its environment;
// identities missing from it are left out.
func AuthorizationConf(nkeys map[string]string) string {
	var b strings.Builder
	b.WriteString("# Generated from libs/access (the permission table); `modelport nats conf` writes it.\n")
	b.WriteString("authorization {\n  users: [\n")
	for _, id := range Identities {
		key, ok := nkeys[id.Name]
		if !ok {
			continue
		}
		p := id.NATSPermissions()
		fmt.Fprintf(&b, "    # %s: %s\n", id.Name, id.About)
		fmt.Fprintf(&b, "    {\n      nkey: %s\n      permissions: {\n", key)
		writeRule(&b, "publish", p.Publish)
		writeRule(&b, "subscribe", p.Subscribe)
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

func writeRule(b *strings.Builder, what string, r Rule) {
	fmt.Fprintf(b, "        %s: {\n", what)
	list := func(name string, subjects []string) {
		if len(subjects) == 0 {
			return
		}
		fmt.Fprintf(b, "          %s: [\n", name)
		for _, s := range subjects {
			// Quoted, so that "$JS..." is a subject, not a variable.
			fmt.Fprintf(b, "            %q\n", s)
		}
		b.WriteString("          ]\n")
	}
	list("allow", r.Allow)
	list("deny", r.Deny)
	b.WriteString("        }\n")
}

// SeedVar is the environment variable a deployment's settings carry an
// identity's NKey seed in, before it becomes the identity's file:
// MODELPORT_NATS_SEED_<IDENTITY>.
func SeedVar(name string) string {
	return "MODELPORT_NATS_SEED_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}
