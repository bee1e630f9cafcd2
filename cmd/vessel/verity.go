package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vesselos/vessel/internal/verity"
)

func init() { addCommand(verityCmd) }

func verityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verity",
		Short: "Create, check and inspect dm-verity hash trees (veritysetup compatible)",
		Long: `The verity commands build and check dm-verity hash trees (format 1,
hash type 1) in userspace, byte-compatible with cryptsetup's veritysetup.
A layer blob is a filesystem image followed by its tree in the same file.`,
	}
	cmd.AddCommand(verityFormatCmd(g), verityVerifyCmd(g), verityDumpCmd(g))
	return cmd
}

// verityInfo is what format and dump print.
type verityInfo struct {
	Path          string `json:"path"`
	UUID          string `json:"uuid"`
	HashType      int    `json:"hashType"`
	DataBlocks    uint64 `json:"dataBlocks"`
	DataBlockSize uint32 `json:"dataBlockSize"`
	HashBlockSize uint32 `json:"hashBlockSize"`
	HashAlgorithm string `json:"hashAlgorithm"`
	Salt          string `json:"salt"`
	HashOffset    int64  `json:"hashOffset"`
	RootHash      string `json:"rootHash,omitempty"`
}

func newVerityInfo(path string, p verity.Params, root []byte) verityInfo {
	salt := hex.EncodeToString(p.Salt)
	if salt == "" {
		salt = "-"
	}
	u := hex.EncodeToString(p.UUID[:])
	return verityInfo{
		Path: path, UUID: u[:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:],
		HashType: 1, DataBlocks: p.DataBlocks, DataBlockSize: p.DataBlockSize, HashBlockSize: p.HashBlockSize,
		HashAlgorithm: p.HashAlg, Salt: salt, HashOffset: p.HashOffset, RootHash: hex.EncodeToString(root),
	}
}

// print writes the header the way veritysetup does, or JSON.
func (v verityInfo) print(w io.Writer, asJSON bool) error {
	if asJSON {
		return printJSON(w, v)
	}
	fmt.Fprintf(w, "VERITY header information for %s\n", v.Path)
	fmt.Fprintf(w, "UUID:            \t%s\n", v.UUID)
	fmt.Fprintf(w, "Hash type:       \t%d\n", v.HashType)
	fmt.Fprintf(w, "Data blocks:     \t%d\n", v.DataBlocks)
	fmt.Fprintf(w, "Data block size: \t%d\n", v.DataBlockSize)
	fmt.Fprintf(w, "Hash block size: \t%d\n", v.HashBlockSize)
	fmt.Fprintf(w, "Hash algorithm:  \t%s\n", v.HashAlgorithm)
	fmt.Fprintf(w, "Salt:            \t%s\n", v.Salt)
	if v.HashOffset != 0 {
		fmt.Fprintf(w, "Hash offset:     \t%d\n", v.HashOffset)
	}
	if v.RootHash != "" {
		fmt.Fprintf(w, "Root hash:      \t%s\n", v.RootHash)
	}
	return nil
}

func verityFormatCmd(g *globals) *cobra.Command {
	var (
		salt, uuid, alg string
		dataBlocks      uint64
		hashOffset      int64
		dbs, hbs        uint32
	)
	cmd := &cobra.Command{
		Use:   "format DATA HASH",
		Short: "Compute the hash tree of DATA, write it to HASH and print the root hash",
		Long: `format computes the dm-verity hash tree of DATA and writes the superblock
and the tree to HASH at --hash-offset, like veritysetup format. DATA and
HASH may be the same file: the tree then follows the data.`,
		Example: `  vessel verity format layer.img layer.hash
  vessel verity format --salt - --uuid 12345678-1234-1234-1234-123456789abc data hash
  # the layer-blob layout: image padded to 4096, tree appended
  vessel verity format --data-blocks 2560 --hash-offset 10485760 blob blob`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := verity.Params{HashAlg: alg, DataBlockSize: dbs, HashBlockSize: hbs, DataBlocks: dataBlocks, HashOffset: hashOffset}
			var err error
			if p.Salt, err = parseSalt(salt); err != nil {
				return err
			}
			if p.UUID, err = parseUUID(uuid); err != nil {
				return err
			}
			root, err := formatFiles(args[0], args[1], &p)
			if err != nil {
				return err
			}
			return newVerityInfo(args[1], p, root).print(cmd.OutOrStdout(), g.json)
		},
	}
	f := cmd.Flags()
	f.StringVar(&salt, "salt", "", `salt in hex, "-" for none (default 32 random bytes)`)
	f.StringVar(&uuid, "uuid", "", "UUID stored in the superblock (default random)")
	f.StringVar(&alg, "hash", "sha256", "hash algorithm: sha256, sha1 or sha512")
	f.Uint64Var(&dataBlocks, "data-blocks", 0, "data blocks to cover (default: the size of DATA, or up to --hash-offset when DATA is HASH)")
	f.Int64Var(&hashOffset, "hash-offset", 0, "byte offset of the superblock in HASH")
	f.Uint32Var(&dbs, "data-block-size", 4096, "data block size in bytes")
	f.Uint32Var(&hbs, "hash-block-size", 4096, "hash block size in bytes")
	return cmd
}

// formatFiles opens the files, settles the number of data blocks and runs
// verity.Format, filling in p as written.
func formatFiles(dataPath, hashPath string, p *verity.Params) (root []byte, err error) {
	data, err := os.Open(dataPath)
	if err != nil {
		return nil, err
	}
	defer data.Close()
	hash, err := os.OpenFile(hashPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := hash.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	dfi, err := data.Stat()
	if err != nil {
		return nil, err
	}
	hfi, err := hash.Stat()
	if err != nil {
		return nil, err
	}
	same := os.SameFile(dfi, hfi)
	if p.DataBlocks == 0 {
		size := dfi.Size()
		if same {
			if p.HashOffset == 0 {
				return nil, usageError{"DATA and HASH are the same file: give --hash-offset (and --data-blocks)"}
			}
			size = p.HashOffset
		}
		if p.DataBlockSize == 0 || size%int64(p.DataBlockSize) != 0 {
			return nil, fmt.Errorf("%s: size %d is not a multiple of the data block size %d: pad it or give --data-blocks",
				dataPath, size, p.DataBlockSize)
		}
		p.DataBlocks = uint64(size / int64(p.DataBlockSize))
	}
	if end := p.DataBlocks * uint64(p.DataBlockSize); same && uint64(p.HashOffset) < end {
		return nil, usageError{fmt.Sprintf("--hash-offset %d would overwrite the data, which ends at %d", p.HashOffset, end)}
	}
	root, err = verity.Format(data, hash, *p)
	if err != nil {
		return nil, fmt.Errorf("format %s: %w", hashPath, err)
	}
	if err := hash.Sync(); err != nil {
		return nil, err
	}
	return root, nil
}

func verityVerifyCmd(g *globals) *cobra.Command {
	var (
		hashOffset int64
		dataBlocks uint64
	)
	cmd := &cobra.Command{
		Use:   "verify DATA HASH ROOT",
		Short: "Check every block of DATA and HASH against the root hash ROOT",
		Long: `verify reads the superblock in HASH, checks every hash block and every
data block against ROOT and names the first corrupted block, like
veritysetup verify (without device-mapper).`,
		Example: `  vessel verity verify layer.img layer.hash 3365de92551aa362c05b311da2fd1082e4a20afd9b58016003f19c3550298075
  vessel verity verify --data-blocks 2560 --hash-offset 10485760 blob blob ROOT`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := hex.DecodeString(args[2])
			if err != nil || len(root) == 0 {
				return usageError{fmt.Sprintf("root hash %q is not hex", args[2])}
			}
			data, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer data.Close()
			hash, err := os.Open(args[1])
			if err != nil {
				return err
			}
			defer hash.Close()
			p, err := verity.ReadSuperblock(hash, hashOffset)
			if err != nil {
				return fmt.Errorf("%s: %w", args[1], err)
			}
			if dataBlocks != 0 && dataBlocks != p.DataBlocks {
				return fmt.Errorf("%s: superblock covers %d data blocks, --data-blocks says %d", args[1], p.DataBlocks, dataBlocks)
			}
			if err := verity.Verify(data, hash, p, root); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"verified": true, "dataBlocks": p.DataBlocks, "rootHash": args[2]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "verified %d data blocks of %s against root hash %s\n", p.DataBlocks, args[0], args[2])
			return nil
		},
	}
	cmd.Flags().Int64Var(&hashOffset, "hash-offset", 0, "byte offset of the superblock in HASH")
	cmd.Flags().Uint64Var(&dataBlocks, "data-blocks", 0, "expected number of data blocks (checked against the superblock)")
	return cmd
}

func verityDumpCmd(g *globals) *cobra.Command {
	var hashOffset int64
	cmd := &cobra.Command{
		Use:     "dump HASH",
		Short:   "Print the verity superblock of HASH",
		Example: "  vessel verity dump layer.hash\n  vessel verity dump --hash-offset 10485760 --json blob",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			p, err := verity.ReadSuperblock(f, hashOffset)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return newVerityInfo(args[0], p, nil).print(cmd.OutOrStdout(), g.json)
		},
	}
	cmd.Flags().Int64Var(&hashOffset, "hash-offset", 0, "byte offset of the superblock in HASH")
	return cmd
}

// parseSalt reads --salt: hex, "-" for none, empty for 32 random bytes.
func parseSalt(s string) ([]byte, error) {
	switch s {
	case "-":
		return nil, nil
	case "":
		b := make([]byte, 32)
		_, err := rand.Read(b)
		return b, err
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--salt %q is not hex (use - for no salt)", s)}
	}
	return b, nil
}

// parseUUID reads --uuid in the canonical 8-4-4-4-12 form; empty gives a random (version 4) UUID.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	if s == "" {
		_, err := rand.Read(u[:])
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		return u, err
	}
	bad := usageError{fmt.Sprintf("--uuid %q is not a UUID like 12345678-1234-1234-1234-123456789abc", s)}
	parts := strings.Split(s, "-")
	if len(s) != 36 || len(parts) != 5 {
		return u, bad
	}
	b, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil || len(b) != 16 {
		return u, bad
	}
	copy(u[:], b)
	return u, nil
}
