// Package bgp announces virtual addresses to routers with BGP (GoBGP as a
// library), for directors that all serve at once behind a router that
// spreads flows over them (ECMP). A director announces an address only
// while it can serve it and withdraws it otherwise; a stopping one first
// marks its routes with the GRACEFUL_SHUTDOWN community (RFC 8326) so
// that the router moves traffic away before the routes go.
package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// GracefulShutdown is the well-known community GRACEFUL_SHUTDOWN
// (65535:0, RFC 8326): routers lower the preference of routes carrying it.
const GracefulShutdown = 0xFFFF0000

// Config is what the speaker needs.
type Config struct {
	LocalAS     uint32
	RouterID    netip.Addr
	Communities []uint32
	Neighbors   []Neighbor
}

// Neighbor is a router to peer with.
type Neighbor struct {
	Address  netip.Addr
	PeerAS   uint32
	Port     uint16
	Password string // TCP MD5
	HoldTime time.Duration
}

// Peer is a session's state.
type Peer struct {
	Address netip.Addr
	PeerAS  uint32
	State   string // idle, connect, active, opensent, openconfirm, established
	Since   time.Time
}

// Speaker announces prefixes to its neighbors.
type Speaker struct {
	log *slog.Logger
	cfg Config
	s   *server.BgpServer

	mu        sync.Mutex
	announced map[netip.Prefix]bool
	shutdown  bool // routes carry GRACEFUL_SHUTDOWN
}

// New returns a speaker for cfg; Start starts it.
func New(log *slog.Logger, cfg Config) *Speaker {
	sp := &Speaker{log: log, cfg: cfg, announced: map[netip.Prefix]bool{}}
	sp.s = server.NewBgpServer(server.LoggerOption(&logger{log: log}))
	return sp
}

// Start runs the BGP server and opens the sessions; they come up in the
// background. It does not listen: the director connects to the routers.
func (sp *Speaker) Start(ctx context.Context) error {
	go sp.s.Serve()
	if err := sp.s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: sp.cfg.LocalAS, RouterId: sp.cfg.RouterID.String(), ListenPort: -1,
	}}); err != nil {
		return fmt.Errorf("start BGP: %w", err)
	}
	for _, n := range sp.cfg.Neighbors {
		hold := uint64(n.HoldTime / time.Second)
		p := &api.Peer{
			Conf: &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.PeerAS, AuthPassword: n.Password},
			Timers: &api.Timers{Config: &api.TimersConfig{HoldTime: hold, KeepaliveInterval: max(hold/3, 1),
				ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
			Transport: &api.Transport{RemotePort: uint32(n.Port)},
			AfiSafis: []*api.AfiSafi{
				{Config: &api.AfiSafiConfig{Family: family(false), Enabled: true}},
				{Config: &api.AfiSafiConfig{Family: family(true), Enabled: true}},
			},
		}
		if err := sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: p}); err != nil {
			return fmt.Errorf("BGP neighbor %s: %w", n.Address, err)
		}
	}
	return nil
}

// Stop ends every session (a NOTIFICATION Cease to each router) and the
// server.
func (sp *Speaker) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return sp.s.StopBgp(ctx, &api.StopBgpRequest{})
}

func family(v6 bool) *api.Family {
	if v6 {
		return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
}

// path is p's route with next hop self and the communities.
func (sp *Speaker) path(p netip.Prefix, shutdown bool) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	if err != nil {
		return nil, err
	}
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	attrs := []*anypb.Any{origin}
	v6 := p.Addr().Is6()
	// An unspecified next hop is the session's own address: next hop
	// self, whichever router the route goes to.
	if v6 {
		mp, err := anypb.New(&api.MpReachNLRIAttribute{Family: family(true), NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	} else {
		nh, _ := anypb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
		attrs = append(attrs, nh)
	}
	cs := slices.Clone(sp.cfg.Communities)
	if shutdown {
		cs = append(cs, GracefulShutdown)
	}
	if len(cs) > 0 {
		c, _ := anypb.New(&api.CommunitiesAttribute{Communities: cs})
		attrs = append(attrs, c)
	}
	return &api.Path{Family: family(v6), Nlri: nlri, Pattrs: attrs}, nil
}

// Announce advertises p (an address as /32 or /128) to every neighbor.
func (sp *Speaker) Announce(ctx context.Context, p netip.Prefix) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.announced[p] {
		return nil
	}
	path, err := sp.path(p, sp.shutdown)
	if err != nil {
		return err
	}
	if _, err := sp.s.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("announce %s: %w", p, err)
	}
	sp.announced[p] = true
	return nil
}

// Withdraw takes p back from every neighbor.
func (sp *Speaker) Withdraw(ctx context.Context, p netip.Prefix) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.announced[p] {
		return nil
	}
	path, err := sp.path(p, sp.shutdown)
	if err != nil {
		return err
	}
	if err := sp.s.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("withdraw %s: %w", p, err)
	}
	delete(sp.announced, p)
	return nil
}

// Announced lists the prefixes announced now.
func (sp *Speaker) Announced() []netip.Prefix {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out := make([]netip.Prefix, 0, len(sp.announced))
	for p := range sp.announced {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// GracefulShutdown announces every route again with the GRACEFUL_SHUTDOWN
// community, and every later one with it: the routers prefer the other
// directors' routes from now on, while this one still serves.
func (sp *Speaker) GracefulShutdown(ctx context.Context) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.shutdown = true
	for p := range sp.announced {
		path, err := sp.path(p, true)
		if err != nil {
			return err
		}
		if _, err := sp.s.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
			return fmt.Errorf("announce %s with GRACEFUL_SHUTDOWN: %w", p, err)
		}
	}
	return nil
}

// Peers reports every session.
func (sp *Speaker) Peers(ctx context.Context) ([]Peer, error) {
	var out []Peer
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		pr := Peer{Address: a, PeerAS: p.GetConf().GetPeerAsn(),
			State: strings.ToLower(strings.TrimPrefix(p.GetState().GetSessionState().String(), "SESSION_STATE_"))}
		if up := p.GetTimers().GetState().GetUptime(); up != nil && pr.State == "established" {
			pr.Since = up.AsTime()
		}
		out = append(out, pr)
	})
	slices.SortFunc(out, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	return out, err
}

// logger hands GoBGP's log lines to slog, at their levels.
type logger struct{ log *slog.Logger }

func (l *logger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	args := make([]any, 0, 2*len(fields)+2)
	args = append(args, "component", "gobgp")
	for k, v := range fields {
		if k == "Topic" || k == "Key" {
			k = strings.ToLower(k)
		}
		args = append(args, k, v)
	}
	l.log.Log(context.Background(), level, msg, args...)
}

func (l *logger) Panic(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f); panic(msg) }
func (l *logger) Fatal(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logger) Error(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logger) Warn(msg string, f gobgplog.Fields)  { l.emit(slog.LevelWarn, msg, f) }
func (l *logger) Info(msg string, f gobgplog.Fields)  { l.emit(slog.LevelInfo, msg, f) }
func (l *logger) Debug(msg string, f gobgplog.Fields) { l.emit(slog.LevelDebug, msg, f) }
func (l *logger) SetLevel(gobgplog.LogLevel)          {}
func (l *logger) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }
