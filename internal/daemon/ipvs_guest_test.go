package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/ctl"
	"github.com/directord/directord/internal/testbed/lab"

	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/lvs"
)

// TestGuestDaemonIPVS runs the daemon on a kernel with IPVS (the qemu
// guest of make test-ipvs): auto picks IPVS, the table holds what the
// file says (wlc and dr, which nftables cannot do), the sysctls are set,
// and stopping removes the services.
func TestGuestDaemonIPVS(t *testing.T) {
	sock, log, stop := guestDaemon(t, `[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "wlc"
forwarding = "dr"
persistence_timeout = "300s"
  [[virtual_server.real_server]]
  address = "203.0.113.11:80"
  [[virtual_server.real_server]]
  address = "203.0.113.12:80"
  weight = 2

[[virtual_server]]
name = "dns"
address = "192.0.2.100:53"
protocol = "udp"
scheduler = "rr"
one_packet = true
  [[virtual_server.real_server]]
  address = "203.0.113.11:53"
`)
	st := guestLVS(t, sock, log, func(st api.LVSStatus) bool {
		return len(st.Services) == 2 && len(st.Services[0].Reals)+len(st.Services[1].Reals) == 3
	})
	if st.Dataplane != "ipvs" || st.Reason != "auto: the kernel has IPVS" {
		t.Fatalf("data plane %q (%s)", st.Dataplane, st.Reason)
	}
	web, dns := st.Services[0], st.Services[1] // sorted: tcp before udp
	if web.Name != "web" || web.Scheduler != "wlc" || web.Persistence != 300*time.Second || web.Reals[1].Method != string(lvs.DR) || web.Reals[1].Weight != 2 {
		t.Fatalf("web in the kernel: %+v", web)
	}
	if dns.Name != "dns" || !dns.OnePacket {
		t.Fatalf("dns in the kernel: %+v", dns)
	}
	want := map[string]bool{"net.ipv4.ip_forward": true, "net.ipv4.vs.expire_nodest_conn": true, "net.ipv4.vs.conntrack": true}
	for _, s := range st.Sysctls {
		if s.Err != "" {
			t.Errorf("sysctl %s: %s", s.Key, s.Err)
		}
		b, _ := os.ReadFile("/proc/sys/" + filepath.Join(splitDots(s.Key)...))
		if string(bytes.TrimSpace(b)) != s.Want {
			t.Errorf("sysctl %s is %q, want %s", s.Key, b, s.Want)
		}
		delete(want, s.Key)
	}
	if len(want) > 0 {
		t.Errorf("sysctls not set: %v (have %+v)", want, st.Sysctls)
	}

	stop()
	d, err := lvs.NewIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if es, err := d.List(); err != nil || len(es) != 0 {
		t.Fatalf("after stop the kernel has %+v, %v", es, err)
	}
}

// guestDaemon runs the daemon in the guest with the file's [node] and
// then body; stop ends it and checks Run's error.
func guestDaemon(t *testing.T, body string) (sock string, log *lab.Buffer, stop func()) {
	t.Helper()
	if os.Getenv("DIRECTORD_IPVS_GUEST") != "1" {
		t.Skip("runs inside the qemu guest with Debian's kernel: make test-ipvs (part of make test)")
	}
	dir := t.TempDir()
	sock = filepath.Join(dir, "directord.sock")
	conf := filepath.Join(dir, "directord.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "[node]\nname = \"guest\"\ndata_dir = %q\nstatus_socket = %q\n\n%s", filepath.Join(dir, "data"), sock, body), 0o644); err != nil {
		t.Fatal(err)
	}
	log = &lab.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{ConfigFile: conf, Version: "guest", Log: log}) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v\n%s", err, log.String())
			}
		})
	}
	t.Cleanup(stop)
	return sock, log, stop
}

// guestLVS polls the daemon's lvs status until ok says it is what the
// test waits for.
func guestLVS(t *testing.T, sock string, log *lab.Buffer, ok func(api.LVSStatus) bool) api.LVSStatus {
	t.Helper()
	var st api.LVSStatus
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, err := status.NewClient(sock).Raw(context.Background(), "/v1/status/lvs")
		if err == nil {
			st = api.LVSStatus{}
			if err = json.Unmarshal(raw, &st); err == nil && ok(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lvs status: %v %+v\n%s", err, st, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestGuestDaemonSyncDaemons: with lvs_sync_daemon the backup sync daemon
// runs from the start and the master one while the VRRP instance is
// MASTER; both go at exit.
func TestGuestDaemonSyncDaemons(t *testing.T) {
	if os.Getenv("DIRECTORD_IPVS_GUEST") != "1" {
		t.Skip("runs inside the qemu guest with Debian's kernel: make test-ipvs (part of make test)")
	}
	for _, args := range [][]string{
		{"link", "add", "sync0", "type", "dummy"},
		{"link", "set", "sync0", "up", "multicast", "on"},
		{"addr", "add", "192.0.2.1/24", "dev", "sync0"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	sock, log, stop := guestDaemon(t, `[dataplane]
lvs_sync_daemon = { interface = "sync0", instance = "VI_1" }

[[vrrp_instance]]
name = "VI_1"
interface = "sync0"
virtual_router_id = 51
advert_int = "100ms"
virtual_ipaddress = ["192.0.2.100/24"]
`)
	ctx := context.Background()
	want := []lvs.SyncDaemon{
		{State: lvs.SyncMaster, Interface: "sync0", SyncID: 51},
		{State: lvs.SyncBackup, Interface: "sync0", SyncID: 51},
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ds, err := lvs.SyncDaemons()
		if err == nil {
			slices.SortFunc(ds, func(a, b lvs.SyncDaemon) int { return int(a.State) - int(b.State) })
			// The kernel reports its defaults for what was not set.
			for i := range ds {
				ds[i].MaxLen, ds[i].Group, ds[i].Port, ds[i].TTL = 0, netip.Addr{}, 0, 0
			}
			if slices.Equal(ds, want) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sync daemons %+v, %v; want %+v\n%s", ds, err, want, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Status shows them.
	raw, err := status.NewClient(sock).Raw(ctx, "/v1/status/lvs")
	var st api.LVSStatus
	if err != nil || json.Unmarshal(raw, &st) != nil || len(st.SyncDaemons) != 2 {
		t.Fatalf("lvs status without the sync daemons: %v %s", err, raw)
	}

	// A planned handover (forced: no other director is here to take
	// over): BACKUP for a while, the master daemon goes; MASTER again, it
	// comes back. The backup daemon stays throughout.
	var fr api.FailoverResult
	if err := status.NewClient(sock).Post(ctx, "/v1/vrrp/VI_1/failover", api.FailoverRequest{Hold: "1s", Force: true}, &fr); err != nil {
		t.Fatal(err)
	}
	states := func() string {
		ds, _ := lvs.SyncDaemons()
		var s []string
		for _, d := range ds {
			s = append(s, d.State.String())
		}
		slices.Sort(s)
		return fmt.Sprint(s)
	}
	for _, want := range []string{"[backup]", "[backup master]"} {
		deadline := time.Now().Add(10 * time.Second)
		for states() != want {
			if time.Now().After(deadline) {
				t.Fatalf("sync daemons %s, want %s\n%s", states(), want, log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	stop()
	if ds, err := lvs.SyncDaemons(); err != nil || len(ds) != 0 {
		t.Fatalf("after stop: %+v, %v", ds, err)
	}
}

// TestGuestDaemonSave: directorctl lvs save prints what ipvsadm -S -n
// prints of the same kernel table (Debian's ipvsadm, run in the guest as
// the independent reader), line for line: every forwarding method,
// persistence with a netmask in both families, scheduler flags, one-packet
// scheduling, thresholds, UDP, firewall marks of both families.
func TestGuestDaemonSave(t *testing.T) {
	sock, log, _ := guestDaemon(t, `[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "wrr"
  [[virtual_server.real_server]]
  address = "203.0.113.11:8080"
  [[virtual_server.real_server]]
  address = "203.0.113.12:8080"
  weight = 3
  upper_threshold = 100
  lower_threshold = 50

[[virtual_server]]
name = "tls"
address = "192.0.2.100:443"
scheduler = "sh"
scheduler_flags = ["sh-fallback", "sh-port"]
forwarding = "dr"
persistence_timeout = "300s"
persistence_granularity = 24
  [[virtual_server.real_server]]
  address = "203.0.113.11:443"

[[virtual_server]]
name = "dns"
address = "192.0.2.100:53"
protocol = "udp"
scheduler = "rr"
one_packet = true
forwarding = "tun"
  [[virtual_server.real_server]]
  address = "203.0.113.11:53"

[[virtual_server]]
name = "marked"
fwmark = 7
scheduler = "rr"
  [[virtual_server.real_server]]
  address = "203.0.113.13"

[[virtual_server]]
name = "v6"
address = "[2001:db8::100]:80"
scheduler = "lc"
forwarding = "dr"
persistence_timeout = "60s"
persistence_granularity = 64
  [[virtual_server.real_server]]
  address = "[2001:db8::11]:80"

[[virtual_server]]
name = "marked6"
fwmark = 8
family = "ipv6"
scheduler = "wlc"
  [[virtual_server.real_server]]
  address = "2001:db8::12"
`)
	guestLVS(t, sock, log, func(st api.LVSStatus) bool {
		n := 0
		for _, s := range st.Services {
			n += len(s.Reals)
		}
		return len(st.Services) == 6 && n == 7
	})
	ipvsadm, err := exec.LookPath("ipvsadm")
	if err != nil {
		t.Fatalf("no ipvsadm in the guest (make test installs it on the host; the guest takes it from there): %v", err)
	}
	want, err := exec.Command(ipvsadm, "-S", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("ipvsadm -S -n: %v\n%s", err, want)
	}
	var got, stderr bytes.Buffer
	if code := ctl.Main("guest", []string{"--socket", sock, "lvs", "save"}, &got, &stderr); code != 0 {
		t.Fatalf("directorctl lvs save: exit %d: %s", code, stderr.String())
	}
	// The kernel lists services in its hash order; compare the lines.
	lines := func(b []byte) []string {
		l := strings.Split(strings.TrimSpace(string(b)), "\n")
		slices.Sort(l)
		return l
	}
	if g, w := lines(got.Bytes()), lines(want); !slices.Equal(g, w) {
		t.Fatalf("directorctl lvs save:\n%s\nipvsadm -S -n:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	t.Logf("ipvsadm -S -n and directorctl lvs save agree:\n%s", want)
	// The thresholds, which ipvsadm's rules leave out, as ipvsadm reads
	// them from the kernel.
	th, err := exec.Command(ipvsadm, "-Ln", "--thresholds", "-t", "192.0.2.100:80").CombinedOutput()
	if err != nil || !regexp.MustCompile(`203\.0\.113\.12:8080\s+100\s+50\s`).Match(th) {
		t.Fatalf("ipvsadm -Ln --thresholds: %v\n%s", err, th)
	}
}
