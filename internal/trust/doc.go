// Package trust holds vessel's keys and the gate every later stage passes
// through: it creates the offline CAs and product keys, signs system
// manifests, and verifies signed manifests into a VerifiedManifest.
//
// The chain is: manifest-signing CA (baked into the initrd) -> product
// certificate (carries the product ID as a urn:uuid URI SAN) -> signed
// system manifest (package manifest) -> image manifests by digest (package
// store) -> layer verity root hashes.
//
// Callers that mount, run, boot or install take a *VerifiedManifest, which
// only Verify can produce: an unverified manifest cannot be passed on. The
// manifest's own data types and parsers live in package manifest; use this
// package to sign and verify them.
//
// Key directory layout (see docs/keys.md):
//
//	DIR/manifest-ca.pem, DIR/manifest-ca.key   manifest-signing CA (key 0600, PKCS#8)
//	DIR/identity-ca.pem, DIR/identity-ca.key   machine-identity CA
//	DIR/revoked.json                           revoked serials and the CRL number
//	DIR/products/NAME/product.pem, product.key, chain.pem
package trust
