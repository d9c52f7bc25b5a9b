package access

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"
)

// SeedFile is the name of an identity's NKey seed file in a credentials
// folder: "<identity>.nk", as `nats --nkey` and nats.go read it.
func SeedFile(dir, name string) string { return filepath.Join(dir, name+".nk") }

// EnsureSeeds makes sure dir holds an NKey seed file for each identity,
// readable by its owner alone, and returns each identity's public key. An
// existing seed is kept, so identities survive restarts; one that is not
// a user seed, or that others may read, is an error naming the file.
func EnsureSeeds(dir string, names []string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials folder: %w", err)
	}
	pubs := make(map[string]string, len(names))
	for _, name := range names {
		path := SeedFile(dir, name)
		pub, err := readSeed(path, 0o077)
		if errors.Is(err, fs.ErrNotExist) {
			pub, err = writeSeed(path)
		}
		if err != nil {
			return nil, err
		}
		pubs[name] = pub
	}
	return pubs, nil
}

// ReadSeed checks that the file at path holds an NKey user seed and
// returns its public key. Who may read the file is the deployment's
// business (a Kubernetes Secret is mounted readable by the pod's group, a
// Compose secret by everyone in its container): see SeedExposed.
func ReadSeed(path string) (string, error) { return readSeed(path, 0) }

// SeedExposed reports whether users other than the file's owner and group
// may read the seed at path.
func SeedExposed(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().Perm()&0o004 != 0
}

func readSeed(path string, forbidden fs.FileMode) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&forbidden != 0 {
		return "", fmt.Errorf("nats seed %s: mode %v lets others read it; make it readable by its owner alone (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(b))
	if err != nil {
		return "", fmt.Errorf("nats seed %s: %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("nats seed %s: %w", path, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("nats seed %s: not a user seed (public key %s)", path, pub)
	}
	return pub, nil
}

func writeSeed(path string) (string, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", err
	}
	seed, err := kp.Seed()
	if err != nil {
		return "", err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("nats seed: %w", err)
	}
	_, err = f.Write(append(seed, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("nats seed %s: %w", path, err)
	}
	return pub, nil
}
