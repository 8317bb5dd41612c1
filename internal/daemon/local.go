package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/directord/directord/cluster"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
)

// localOverrides are the operators' changes to real servers on a director
// without [cluster] (rs drain, enable, disable, weight): kept in data_dir,
// so that they survive a restart, and laid over the file's virtual
// servers, as the cluster lays its replicated overrides over its table.
type localOverrides struct {
	path string
	mu   sync.Mutex
	by   map[string]map[string]cluster.Override // virtual server -> real server
}

func localOverridesFile(dataDir string) string { return filepath.Join(dataDir, "overrides.json") }

// loadLocalOverrides reads the overrides a previous run kept; a missing
// file is none, a damaged one is an error (the file is left for the
// operator to look at).
func loadLocalOverrides(path string) (*localOverrides, error) {
	o := &localOverrides{path: path, by: map[string]map[string]cluster.Override{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return o, fmt.Errorf("overrides: %w", err)
	}
	if err := json.Unmarshal(b, &o.by); err != nil {
		return &localOverrides{path: path, by: map[string]map[string]cluster.Override{}}, fmt.Errorf("overrides %s: %w", path, err)
	}
	return o, nil
}

// apply lays the overrides over vss (none: vss as they are).
func (o *localOverrides) apply(vss []config.VirtualServer) []config.VirtualServer {
	if o == nil {
		return vss
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return applyOverrides(vss, o.by)
}

// shown is the overrides as status shows them; nil when there are none.
func (o *localOverrides) shown() map[string]map[string]string {
	if o == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.by) == 0 {
		return nil
	}
	out := map[string]map[string]string{}
	for vs, m := range o.by {
		out[vs] = map[string]string{}
		for rs, ov := range m {
			switch {
			case ov.Disabled:
				out[vs][rs] = "disabled"
			case ov.Drain:
				out[vs][rs] = "drain"
			case ov.Weight != nil:
				out[vs][rs] = fmt.Sprintf("weight %d", *ov.Weight)
			}
		}
	}
	return out
}

// change applies one rs.* request against the running file's virtual
// servers and keeps the result on disk.
func (o *localOverrides) change(req api.ClusterRequest, vss []config.VirtualServer) error {
	i := slices.IndexFunc(vss, func(v config.VirtualServer) bool { return v.Name == req.Service })
	if i < 0 {
		return fmt.Errorf("no virtual server %q", req.Service)
	}
	if !slices.ContainsFunc(vss[i].RealServers, func(r config.RealServer) bool { return r.Address.String() == req.Real }) {
		return fmt.Errorf("virtual server %s has no real server %s", req.Service, req.Real)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.by[req.Service]
	if m == nil {
		m = map[string]cluster.Override{}
	}
	ov := m[req.Real]
	switch req.Op {
	case api.OpRSDrain:
		ov.Drain, ov.Disabled = true, false
	case api.OpRSDisable:
		ov.Disabled = true
	case api.OpRSEnable:
		ov = cluster.Override{}
	case api.OpRSWeight:
		if req.Weight < 0 || req.Weight > 65535 {
			return fmt.Errorf("weight %d: want 0 to 65535", req.Weight)
		}
		w := req.Weight
		ov.Weight, ov.Drain = &w, false
	default:
		return fmt.Errorf("%s needs [cluster]; without one, edit the file and run directorctl reload", req.Op)
	}
	if ov == (cluster.Override{}) {
		delete(m, req.Real)
	} else {
		m[req.Real] = ov
	}
	if len(m) == 0 {
		delete(o.by, req.Service)
	} else {
		o.by[req.Service] = m
	}
	return o.save()
}

// save keeps the overrides on disk (writeAtomic: a crash leaves the old
// file or the new one).
func (o *localOverrides) save() error {
	if err := writeAtomic(o.path, o.by); err != nil {
		return fmt.Errorf("overrides: %w", err)
	}
	return nil
}

// handleLocal is POST /v1/cluster on a director without [cluster]: the
// real-server operations, on this director.
func (d *Daemon) handleLocal(w http.ResponseWriter, r *http.Request) {
	var req api.ClusterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		status.WriteError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	res := api.ClusterResult{Changed: []string{}}
	if req.DryRun {
		status.WriteJSON(w, http.StatusOK, res)
		return
	}
	d.localMu.Lock()
	defer d.localMu.Unlock()
	cfg := d.config()
	if err := d.local.change(req, cfg.VirtualServers); err != nil {
		status.WriteError(w, http.StatusUnprocessableEntity, fmt.Errorf("%w: %v", cluster.ErrCommand, err))
		return
	}
	d.log.Info("real server changed by hand", "op", req.Op, "virtual_server", req.Service, "real_server", req.Real)
	if err := d.applyVirtualServers(nil, d.local.apply(cfg.VirtualServers)); err != nil {
		status.WriteError(w, http.StatusConflict, err)
		return
	}
	res.Applied = true
	status.WriteJSON(w, http.StatusOK, res)
}
