package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// apiKey is an API key as the control API shows it; Secret only in the
// answer to its creation.
type apiKey struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Prefix    string    `json:"prefix"`
	Secret    string    `json:"key,omitempty"`
	Services  []string  `json:"services"`
	CreatedAt time.Time `json:"created_at"`
}

const keysSynopsis = "create NAME [--service NAME|ID]... | ls | revoke ID|NAME"

func runKeys(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(c.stderr, "usage: modelport keys %s\n", keysSynopsis)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return errors.New("keys: want a subcommand: create, ls or revoke")
	}
	switch args[0] {
	case "create":
		return runKeysCreate(ctx, c, args[1:])
	case "ls", "list":
		return runKeysList(ctx, c, args[1:])
	case "revoke", "rm", "delete":
		return runKeysRevoke(ctx, c, args[1:])
	default:
		return fmt.Errorf("keys: unknown subcommand %q: want create, ls or revoke", args[0])
	}
}

func runKeysCreate(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("keys create", "NAME [--service NAME|ID]...", true)
	var services stringsFlag
	fs.Var(&services, "service", "a service the key may call (repeat for more); none: every service of yours")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	ids := []string{}
	for _, ref := range services {
		s, _, err := resolveService(ctx, a, ref)
		if err != nil {
			return err
		}
		ids = append(ids, s.ID)
	}
	var k apiKey
	raw, _, err := a.do(ctx, http.MethodPost, "/api/v1/keys", map[string]any{"name": pos[0], "services": ids}, &k)
	if err != nil {
		return fmt.Errorf("create key %s: %w", pos[0], err)
	}
	if c.json() {
		return c.printJSON(raw)
	}
	scope := "every service of yours"
	if len(services) > 0 {
		scope = strings.Join(services, ", ")
	}
	fmt.Fprintf(c.stderr, "Created key %s (ID %s) for %s. Its secret is shown this once; only its hash is kept:\n", k.Name, k.ID, scope)
	fmt.Fprintln(c.stdout, k.Secret)
	return nil
}

func runKeysList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("keys ls", "", true)
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	var keys []apiKey
	raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/keys", nil, &keys)
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(raw)
	}
	names := map[string]string{}
	if _, list, err := listServices(ctx, a, nil); err == nil {
		for _, s := range list {
			names[s.ID] = s.Name
		}
	}
	tw := c.table()
	fmt.Fprintln(tw, "ID\tNAME\tPREFIX\tSERVICES\tCREATED")
	for _, k := range keys {
		scope := "all"
		if len(k.Services) > 0 {
			var ss []string
			for _, id := range k.Services {
				ss = append(ss, firstOf(names[id], id))
			}
			scope = strings.Join(ss, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\n", k.ID, firstOf(k.Name, "-"), k.Prefix, scope, localTime(k.CreatedAt))
	}
	return tw.Flush()
}

func runKeysRevoke(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("keys revoke", "ID|NAME", true)
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	var keys []apiKey
	if _, _, err := a.do(ctx, http.MethodGet, "/api/v1/keys", nil, &keys); err != nil {
		return err
	}
	var match []apiKey
	for _, k := range keys {
		if k.ID == pos[0] {
			match = []apiKey{k}
			break
		}
		if k.Name == pos[0] {
			match = append(match, k)
		}
	}
	switch {
	case len(match) == 0:
		return fmt.Errorf("key %q not found (modelport keys ls lists them)", pos[0])
	case len(match) > 1:
		var ids []string
		for _, k := range match {
			ids = append(ids, k.ID)
		}
		return fmt.Errorf("%d keys are named %q: give one's ID: %s", len(match), pos[0], strings.Join(ids, ", "))
	}
	k := match[0]
	if _, _, err := a.do(ctx, http.MethodDelete, "/api/v1/keys/"+url.PathEscape(k.ID), nil, nil); err != nil {
		return fmt.Errorf("revoke key %s: %w", k.Name, err)
	}
	if c.json() {
		return c.printValue(map[string]any{"id": k.ID, "name": k.Name, "revoked": true})
	}
	fmt.Fprintf(c.stdout, "Revoked key %s (%s, %s…).\n", k.Name, k.ID, k.Prefix)
	return nil
}
