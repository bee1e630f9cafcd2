package mount

// PrivateDirs are the parts of the run directory that describe mounts of
// one mount namespace: mount records, layer mount points, what each layer
// mount was verified against, reference counts, and fresh upper layers. A rootless vessel runs in a
// mount namespace of its own (package userns) and gives each of them a
// fresh tmpfs there, so that its records never claim mounts another
// namespace holds and vanish with the namespace. The verification cache
// and the lock stay shared: a layer verified by one rootless vessel is not
// verified again by the next (the cache is the user's own, as are the
// blobs it vouches for).
func PrivateDirs(run string) []string {
	return []string{layersDir(run), layerRecordsDir(run), refsDir(run), mountsDir(run), upperDir(run, "")}
}
