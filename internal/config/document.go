package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// MaxDocument bounds one replicated virtual server's JSON: a thousand
// real servers with a full health check are well under it.
const MaxDocument = 1 << 20

// ValidateDocument checks a virtual server as the replicated table holds
// it (Documents) with the file's validator, plus the cluster's rule that
// no command travels in it. The error names the key the way an operator
// reads it: "virtual_server.web.health_check.body_regex: ...".
func ValidateDocument(name string, doc json.RawMessage) error {
	vs, err := decodeDocument(name, doc)
	if err != nil {
		return err
	}
	r := rawOf(vs)
	r.Name = name
	v := &validator{file: "replicated table", pos: newLazyPositions("")}
	v.virtualServers([]rawVS{r})
	v.noCommands([]rawVS{r})
	if len(v.problems) == 0 {
		return nil
	}
	msgs := make([]string, len(v.problems))
	for i, p := range v.problems {
		key := strings.Replace(p.Key, "virtual_server[0]", "virtual_server."+name, 1)
		msgs[i] = key + ": " + p.Msg
	}
	return errors.New(strings.Join(msgs, "; "))
}

// decodeDocument turns a replicated virtual server into the table's
// form, after ValidateDocument accepted it.
func decodeDocument(name string, doc json.RawMessage) (VirtualServer, error) {
	var vs VirtualServer
	if !validName(name) {
		return vs, fmt.Errorf("virtual_server %q: not a valid name (letters, digits, '.', '_' and '-')", name)
	}
	if len(doc) > MaxDocument {
		return vs, fmt.Errorf("virtual_server.%s: %d bytes, over the limit of %d", name, len(doc), MaxDocument)
	}
	d := json.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	if err := d.Decode(&vs); err != nil {
		return vs, fmt.Errorf("virtual_server.%s: %w", name, err)
	}
	return vs, nil
}

// rawOf writes a virtual server back in the file's raw form, so that the
// file's validator judges it.
func rawOf(vs VirtualServer) rawVS {
	dur := func(d time.Duration) string { return d.String() }
	num := func(n int) *int { return &n }
	flag := func(b bool) *bool { return &b }
	r := rawVS{
		Name: vs.Name, Protocol: vs.Protocol, Scheduler: vs.Scheduler, SchedulerFlags: vs.SchedulerFlags,
		Forwarding: vs.Forwarding, PersistenceTimeout: dur(vs.PersistenceTimeout),
		OnePacket: flag(vs.OnePacket), Masquerade: flag(vs.Masquerade), Quorum: num(vs.Quorum),
		Hysteresis: num(vs.Hysteresis), InhibitOnFailure: flag(vs.InhibitOnFailure), DrainTimeout: dur(vs.DrainTimeout),
		Announce: vs.Announce,
	}
	if vs.Hysteresis == 0 {
		r.Hysteresis = nil // the file's default; "0 >= quorum" is not a mistake anyone made
	}
	if vs.FWMark != 0 || !vs.Address.IsValid() {
		r.FWMark = num(int(vs.FWMark))
		r.Family = "ipv4"
		if vs.IPv6 {
			r.Family = "ipv6"
		}
	} else {
		r.Address = vs.Address.String()
	}
	if vs.PersistenceBits != 0 {
		r.PersistenceGranularity = num(vs.PersistenceBits)
	}
	if vs.SorryServer != nil {
		r.SorryServer = addrOrIP(*vs.SorryServer)
	}
	for _, rs := range vs.RealServers {
		r.RealServer = append(r.RealServer, rawRS{Address: addrOrIP(rs.Address),
			Weight: num(rs.Weight), Forwarding: rs.Forwarding,
			UpperThreshold: num(rs.UpperThreshold), LowerThreshold: num(rs.LowerThreshold), Check: rawChecksOf(rs.Checks)})
	}
	if vs.HealthCheck != nil {
		r.HealthCheck = rawCheckOf(vs.HealthCheck)
	}
	return r
}

func rawChecksOf(cs []HealthCheck) []rawHealthCheck {
	var out []rawHealthCheck
	for i := range cs {
		out = append(out, *rawCheckOf(&cs[i]))
	}
	return out
}

// rawCheckOf writes a check back in the file's raw form.
func rawCheckOf(hc *HealthCheck) *rawHealthCheck {
	dur := func(d time.Duration) string { return d.String() }
	num := func(n int) *int { return &n }
	flag := func(b bool) *bool { return &b }
	h := &rawHealthCheck{Type: hc.Type, Interval: dur(hc.Interval), Timeout: dur(hc.Timeout), Retry: num(hc.Retry),
		DelayBeforeRetry: dur(hc.DelayBeforeRetry), Warmup: dur(hc.Warmup), Rise: num(hc.Rise), Fall: num(hc.Fall),
		Alpha: flag(hc.Alpha), LogAllFailures: flag(hc.LogAllFailures), NotifyUp: hc.NotifyUp, NotifyDown: hc.NotifyDown,
		NotifyUpScript: hc.NotifyUpScript, NotifyDownScript: hc.NotifyDownScript,
		Method: hc.Method, Path: hc.Path, Host: hc.Host, Headers: hc.Headers, StatusCodes: hc.StatusCodes,
		BodyRegex: hc.BodyRegex, Digest: hc.Digest, SNI: hc.SNI, Payload: hc.Payload, Expect: hc.Expect,
		QueryName: hc.QueryName, QueryType: hc.QueryType, Rcode: hc.Rcode, HeloName: hc.HeloName, Command: hc.Command, Script: hc.Script}
	// Keys only some check types take are written only when set, as
	// in a file.
	if hc.ConnectIP.IsValid() {
		h.ConnectIP = hc.ConnectIP.String()
	}
	if hc.ConnectPort != 0 {
		h.ConnectPort = num(int(hc.ConnectPort))
	}
	if hc.BindTo.IsValid() {
		h.BindTo = hc.BindTo.String()
	}
	if hc.VerifyCert {
		h.VerifyCert = flag(true)
	}
	if hc.WarnDays != 0 {
		h.WarnDays = num(hc.WarnDays)
	}
	if hc.Dynamic {
		h.Dynamic = flag(true)
	}
	if hc.Type != "dns" {
		h.QueryName, h.QueryType, h.Rcode = "", "", ""
	}
	if hc.Type != "http" && hc.Type != "https" {
		h.Method, h.Path = "", ""
	}
	return h
}

// addrOrIP writes a fwmark service's real server without a port as its
// bare address, as the file does.
func addrOrIP(a netip.AddrPort) string {
	if a.Port() == 0 {
		return a.Addr().String()
	}
	return a.String()
}
