package registry

import (
	"github.com/opencontainers/go-digest"
)

// Event kinds, in the order a transfer emits them.
const (
	EventPlan     = "plan"     // Count blobs, Size bytes to consider
	EventStart    = "start"    // a blob transfer starts (Offset > 0: resumed)
	EventProgress = "progress" // Done of Size bytes of a blob
	EventBlobDone = "done"     // a blob is in place, digest and size checked
	EventExists   = "exists"   // the destination already had the blob
	EventMounted  = "mounted"  // the registry mounted the blob from another repository
	EventRetry    = "retry"    // a transfer failed and is retried (Error says why)
	EventManifest = "manifest" // a manifest was written
	EventTagged   = "tagged"   // the reference now names the copied manifest
	EventVerified = "verified" // an image or manifest passed verification
)

// Event reports transfer progress. Its JSON form is one line of
// `vessel ... --json` output.
type Event struct {
	Kind      string        `json:"event"`
	Digest    digest.Digest `json:"digest,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size,omitempty"`
	Done      int64         `json:"done,omitempty"`
	Offset    int64         `json:"resumedAt,omitempty"`
	Count     int           `json:"count,omitempty"`
	Ref       string        `json:"ref,omitempty"`
	Error     string        `json:"error,omitempty"`
	// A retried registry request (EventRetry without a Digest): what was
	// asked, which attempt comes next of how many at most, and the wait.
	Request string `json:"request,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	Of      int    `json:"of,omitempty"`
	Wait    string `json:"wait,omitempty"`
}
