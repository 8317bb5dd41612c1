// Package scene builds the network-namespace scenes of directord's tests,
// benchmarks and demo on the lab (internal/testbed/lab), and writes the
// directord files they run through conf:
//
// Pair: a client and two directors (lb1 192.0.2.11, lb2 192.0.2.12) on one
// switch, each running directord or keepalived (VRRP tests, interop, the
// failover bench).
//
// LVS: a client on the front switch, a director between the front and the
// back switch, and real servers on the back switch whose default route is
// the director (classic LVS-NAT):
//
//	client 192.0.2.50 ── front ── 192.0.2.11 director 203.0.113.1 ── back ── 203.0.113.11, .12, ...
//
// The VIP 192.0.2.100 is on the director. Each real server answers TCP on
// port 8080 and UDP on port 5353 with its name, and with ServeHTTP HTTP on
// port 8000.
//
// Sync: LVS-NAT with two directors (lb1 master) and connection sync; the
// real servers' gateway is the inside VIP, which moves with the outside
// VIP (one vrrp_sync_group):
//
//	client 192.0.2.50 ── front ── lb1 .11 / lb2 .12 ── back (203.0.113.2 / .3, VIP .1) ── rs1-3 .11-.13
//	                       └── witness w .13 (with SyncOptions.Cluster)
//
// With SyncOptions.Cluster the directors and a witness replicate the table
// with Raft over the front network, as a pair in production would.
package scene
