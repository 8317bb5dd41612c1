package conf

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/directord/directord/cluster/pki"
	"github.com/directord/directord/internal/config"
)

// What the builder writes is a valid file that says what the values say:
// the builder cannot drift from the schema unnoticed.
func TestFileLoads(t *testing.T) {
	dir := t.TempDir()
	certs, err := Certs(filepath.Join(dir, "certs"), pki.Member{Name: "lb1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.11")}})
	if err != nil {
		t.Fatal(err)
	}
	f := File{
		Node:      Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock"), Extra: []string{`log_level = "debug"`}},
		Dataplane: []string{`kind = "nftables"`},
		Cluster: &Cluster{Bind: "192.0.2.11:7946", RaftBind: "192.0.2.11:7000", Peers: []string{"192.0.2.12:7946"},
			Members: []string{"lb1", "lb2"}, BootstrapExpect: 2, EncryptKey: "ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI=", TLS: certs["lb1"]},
		Sync: &Sync{Listen: "203.0.113.2:7100", Peer: "203.0.113.3:7100", Key: "ZGlyZWN0b3JkIHN5bmMgdGVzdCBrZXksIDMyIGJ5dGU=", Instance: "VI_1"},
		VRRP: []Instance{
			{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, AdvertInt: "100ms", VIPs: []string{"192.0.2.100/24"}, Extra: []string{"preempt = false"}},
			{Name: "VI_2", Interface: "eth1", VRID: 52, Priority: 150, VIPs: []string{"203.0.113.1/24"}},
		},
		SyncGroups: []SyncGroup{{Name: "G", Members: []string{"VI_1", "VI_2"}}},
		VirtualServers: append([]VirtualServer{{Name: "web", Address: "192.0.2.100:80", Scheduler: "rr",
			Check: &Check{Type: "tcp", Interval: "1s", Timeout: "500ms", Extra: []string{"fall = 2"}},
			Reals: []Real{{Address: "203.0.113.11:8080", Weight: 3}, {Address: "203.0.113.12:8080", Extra: []string{"weight = 0"}}}}},
			Table(2, 2)...),
	}
	file := filepath.Join(dir, "d.toml")
	if err := f.Write(file); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("%v\n%s", err, f)
	}
	in := cfg.VRRP[0]
	if cfg.Node.Name != "lb1" || cfg.Node.LogLevel != "debug" || cfg.Dataplane.Kind != "nftables" || cfg.Cluster == nil ||
		cfg.Cluster.BootstrapExpect != 2 || len(cfg.Cluster.Members) != 2 || cfg.Cluster.TLSCA == "" || cfg.Sync == nil || cfg.Sync.Instance != "VI_1" {
		t.Fatalf("node, dataplane, cluster or sync: %+v", cfg)
	}
	if len(cfg.VRRP) != 2 || in.Priority != 150 || in.AdvertInt != 100*time.Millisecond || in.Preempt || len(cfg.SyncGroups) != 1 {
		t.Fatalf("VRRP: %+v", cfg.VRRP)
	}
	vs := cfg.VirtualServers[0]
	if len(cfg.VirtualServers) != 3 || vs.HealthCheck == nil || vs.HealthCheck.Fall != 2 || vs.RealServers[0].Weight != 3 || vs.RealServers[1].Weight != 0 {
		t.Fatalf("virtual servers: %+v", cfg.VirtualServers)
	}
}
