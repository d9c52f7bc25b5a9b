package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/modelport/modelport/libs/access"
)

const natsSynopsis = `keys [--dir DIR] | conf

  keys   make an NKey seed for every identity (kept if there already), in DIR
         (default ./nats-keys): <identity>.nk, readable by their owner alone;
         nats-users.env, the public keys the NATS servers admit
         (MODELPORT_NKEY_<IDENTITY>); nats-seeds.env, the services' seeds
         (MODELPORT_NATS_SEED_<SERVICE>) for Compose's .env or a Kubernetes
         Secret. events-reader.nk is for people following the events.
  conf   print the authorization block of a nats-server configuration: each
         identity, by the public key in MODELPORT_NKEY_<IDENTITY>, with its
         permissions (deploy/compose/nats-auth.conf, deploy/k8s/base/nats-auth.conf)`

// runNATS manages the platform's NATS identities for servers the
// all-in-one does not run.
func runNATS(_ context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		fmt.Fprintf(c.stderr, "usage: modelport nats %s\n", natsSynopsis)
		return errors.New("nats: want a subcommand: keys or conf")
	}
	switch args[0] {
	case "conf":
		fs := c.flags("nats conf", "conf", false)
		if _, err := c.parse(fs, args[1:], 0, 0); err != nil {
			return err
		}
		_, err := fmt.Fprint(c.stdout, access.AuthorizationConf(access.EnvNKeys()))
		return err
	case "keys":
		fs := c.flags("nats keys", "keys [--dir DIR]", false)
		dir := fs.String("dir", "nats-keys", "folder of the seeds and the settings files")
		if _, err := c.parse(fs, args[1:], 0, 0); err != nil {
			return err
		}
		return natsKeys(c, *dir)
	case "-h", "--help":
		fmt.Fprintf(c.stdout, "usage: modelport nats %s\n", natsSynopsis)
		return nil
	}
	fmt.Fprintf(c.stderr, "usage: modelport nats %s\n", natsSynopsis)
	return fmt.Errorf("nats: unknown subcommand %q", args[0])
}

func natsKeys(c *cli, dir string) error {
	pubs, err := access.EnsureSeeds(dir, access.Names())
	if err != nil {
		return err
	}
	var users, seeds bytes.Buffer
	users.WriteString("# The public NKeys the NATS servers admit (modelport nats keys).\n")
	seeds.WriteString("# The services' NKey seeds: secrets (modelport nats keys).\n")
	for _, name := range access.Names() {
		fmt.Fprintf(&users, "%s=%s\n", access.NKeyVar(name), pubs[name])
		if name == access.EventsReader {
			continue // for people, as a file
		}
		b, err := os.ReadFile(access.SeedFile(dir, name))
		if err != nil {
			return err
		}
		fmt.Fprintf(&seeds, "%s=%s\n", access.SeedVar(name), bytes.TrimSpace(b))
	}
	for file, b := range map[string][]byte{"nats-users.env": users.Bytes(), "nats-seeds.env": seeds.Bytes()} {
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "NATS identities in %s:\n", dir)
	for _, name := range access.Names() {
		fmt.Fprintf(c.stdout, "  %-17s %s  %s\n", name, pubs[name], access.SeedFile(dir, name))
	}
	fmt.Fprintf(c.stdout, "  %s: the public keys, for the NATS servers\n", filepath.Join(dir, "nats-users.env"))
	fmt.Fprintf(c.stdout, "  %s: the services' seeds (secret)\n", filepath.Join(dir, "nats-seeds.env"))
	return nil
}
