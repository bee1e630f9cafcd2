package supervise

import (
	"errors"
	"fmt"
	"slices"

	"github.com/vesselos/vessel/internal/userns"
)

// UserNSRow is one allocated id range as vessel userns list shows it.
type UserNSRow struct {
	Product  string   `json:"product"`
	Owner    string   `json:"owner"` // service:NAME or group:NAME
	Services []string `json:"services"`
	UIDs     string   `json:"uids"` // FIRST-LAST on the host
	GIDs     string   `json:"gids"`
	UID      uint32   `json:"uidStart"`
	GID      uint32   `json:"gidStart"`
	Size     uint32   `json:"size"`
	// InUse: a service of the range runs (or starts) under the vessel up
	// supervising dir now.
	InUse     bool   `json:"inUse"`
	Allocated string `json:"allocated"`
}

// UserNSList lists the ranges a has allocated, marking those whose
// services the supervisor of dir runs now.
func UserNSList(dir string, a *userns.Allocator) ([]UserNSRow, error) {
	list, err := a.List()
	if err != nil {
		return nil, err
	}
	var running []string
	product := ""
	if info, err := Running(dir); err == nil {
		product = info.Product
		sts, err := Services(dir)
		if err != nil {
			return nil, err
		}
		for _, st := range sts {
			switch st.State {
			case StateRunning, StateStarting, StateStopping:
				running = append(running, st.Name)
			}
		}
	} else if !errors.Is(err, ErrNotRunning) {
		return nil, err
	}
	rows := []UserNSRow{}
	for _, as := range list {
		r := UserNSRow{
			Product: as.Product, Owner: as.Owner, Services: as.Services,
			UIDs: fmtIDs(as.UID), GIDs: fmtIDs(as.GID), UID: as.UID.Start, GID: as.GID.Start, Size: as.UID.Count,
			Allocated: as.Allocated.Format("2006-01-02T15:04:05Z"),
		}
		if as.Product == product {
			for _, s := range as.Services {
				r.InUse = r.InUse || slices.Contains(running, s)
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func fmtIDs(r userns.Range) string {
	return fmt.Sprintf("%d-%d", r.Start, uint64(r.Start)+uint64(r.Count)-1)
}
