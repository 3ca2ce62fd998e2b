package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/tunnel-dev/tunnel/handshake"
)

type keygenCmd struct {
	Out       string `help:"Path prefix of the key pair: writes PATH.key (private, keep it secret on this host) and PATH.pub (public, give it to the peer)." placeholder:"PATH" required:""`
	Bits      int    `help:"RSA key size in bits (2048 to 8192)." default:"${key_bits}"`
	Force     bool   `help:"Overwrite PATH.key and PATH.pub if they exist."`
	IfMissing bool   `name:"if-missing" help:"If PATH.key and PATH.pub exist and match, keep them and print their fingerprint (for setup steps that run more than once)."`
}

// Run writes the key pair and prints its fingerprint, alone, on stdout.
func (c *keygenCmd) Run(e *env) error {
	if c.Bits < handshake.MinKeyBits || c.Bits > handshake.MaxKeyBits {
		return usagef("--bits %d: give a key size from %d to %d (default %d)", c.Bits, handshake.MinKeyBits, handshake.MaxKeyBits, handshake.DefaultKeyBits)
	}
	keyPath, pubPath := c.Out+".key", c.Out+".pub"
	if c.Force && c.IfMissing {
		return usagef("--force and --if-missing contradict each other: give one")
	}
	if c.IfMissing {
		if fp, ok, err := existingPair(keyPath, pubPath); ok || err != nil {
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, fp)
			e.log.Info().Str("key", keyPath).Str("pub", pubPath).Msg("key pair exists; kept it")
			return nil
		}
	}
	if !c.Force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return usagef("%s exists: not overwriting it (use --force to replace the key pair, or choose another --out)", p)
			}
		}
	}
	k, err := handshake.GenerateKey(c.Bits)
	if err != nil {
		return err
	}
	priv, err := handshake.MarshalPrivateKeyPEM(k)
	if err != nil {
		return err
	}
	pub, err := handshake.MarshalPublicKeyPEM(&k.PublicKey)
	if err != nil {
		return err
	}
	if err := writeKeyFile(keyPath, priv, 0o600, c.Force); err != nil {
		return err
	}
	if err := writeKeyFile(pubPath, pub, 0o644, c.Force); err != nil {
		if !c.Force {
			os.Remove(keyPath) // ours: created exclusively just now
		}
		return err
	}
	fmt.Fprintln(e.stdout, handshake.Fingerprint(&k.PublicKey))
	e.log.Info().Str("key", keyPath).Str("pub", pubPath).Int("bits", c.Bits).
		Msg("wrote key pair; keep the .key on this host and give the .pub to the peer")
	return nil
}

// existingPair reports whether both files of a key pair exist; if so it
// checks that they belong together and returns the fingerprint. One file
// without the other is an error.
func existingPair(keyPath, pubPath string) (fp string, ok bool, err error) {
	_, kerr := os.Stat(keyPath)
	_, perr := os.Stat(pubPath)
	switch {
	case kerr != nil && perr != nil:
		return "", false, nil
	case kerr != nil || perr != nil:
		return "", false, usagef("only one of %s and %s exists: remove it, or restore the other, then run keygen again", keyPath, pubPath)
	}
	k, err := handshake.LoadPrivateKey(keyPath)
	if err != nil {
		return "", false, usagef("%v", err)
	}
	pub, err := handshake.LoadPublicKey(pubPath)
	if err != nil {
		return "", false, usagef("%v", err)
	}
	if !k.PublicKey.Equal(pub) {
		return "", false, usagef("%s does not hold the public key of %s: the pair is mixed up; use --force to make a new one", pubPath, keyPath)
	}
	return handshake.Fingerprint(pub), true, nil
}

// writeKeyFile writes data to path with exactly mode perm. Without force it fails if path
// exists (O_EXCL, so a file created since the check is not clobbered either). The mode is set
// before the data is written, so an existing file never holds the new data with its old mode.
func writeKeyFile(path string, data []byte, perm os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, fs.ErrExist) {
		return usagef("%s exists: not overwriting it (use --force to replace the key pair)", path)
	}
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type fingerprintCmd struct {
	File string `arg:"" help:"Public (.pub) or private (.key) key file." placeholder:"FILE"`
}

// Run prints the fingerprint of the key in File, "SHA256:<unpadded base64>".
func (c *fingerprintCmd) Run(e *env) error {
	data, err := os.ReadFile(c.File)
	if err != nil {
		return usageError{err}
	}
	pub, err := handshake.ParsePublicOrPrivateKey(data)
	if err != nil {
		return usagef("%s: %v", c.File, err)
	}
	fmt.Fprintln(e.stdout, handshake.Fingerprint(pub))
	return nil
}
