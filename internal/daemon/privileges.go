package daemon

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Capabilities directord needs: addresses, routes, nftables, IPVS and
// conntrack (NET_ADMIN); VRRP's raw IP sockets and ARP (NET_RAW).
var requiredCaps = []struct {
	bit  uint
	name string
}{
	{12, "CAP_NET_ADMIN"},
	{13, "CAP_NET_RAW"},
}

// checkPrivileges names every missing capability in one error, rather than
// letting the first netlink call fail with a bare EPERM.
func checkPrivileges() error {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	eff, err := effectiveCaps(data)
	if err != nil {
		return err
	}
	var missing []string
	for _, c := range requiredCaps {
		if eff&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("directord needs %s to manage addresses, VRRP sockets and the load balancer (uid %d lacks them): run it as root or with those capabilities, as etc/directord.service does with AmbientCapabilities",
			strings.Join(missing, " and "), os.Geteuid())
	}
	return nil
}

func effectiveCaps(procStatus []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(procStatus))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff line in /proc/self/status")
}
