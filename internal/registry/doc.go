// Package registry moves images and signed system manifests between OCI
// registries (the distribution spec), OCI layout directories and the local
// store, byte for byte: manifests are copied with their exact bytes, so
// every digest stays the same.
//
// The client is written on net/http: blob existence checks before upload,
// cross-repository mounts on the same host, monolithic or chunked uploads,
// bounded concurrent blob transfers, resumable downloads (a partial blob is
// kept under the store's tmp directory and continued with a Range request),
// retries with backoff on 5xx and connection errors, basic and bearer token
// authentication from the standard container auth files, and TLS with system
// roots or a given CA file. Every blob is checked against its digest and size
// before it enters a store or layout.
//
// Callers: Copy (and its shorthands Push and Pull) for images; PushSigned and
// FetchSigned for signed system manifests published as OCI artifacts with
// their signature attached as a referrer; Install to fetch, verify, pull and
// record a system manifest as the machine's current one. Lower layers: package
// store (blobs and tags on disk), package trust (signature verification),
// package image (verity checks of pulled images).
package registry
