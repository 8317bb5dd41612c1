#!/usr/bin/env bash
# How the keepalived vectors in packet_test.go were captured (as root, with
# keepalived and tcpdump/tshark from Debian): keepalived 2.2.7 as master in
# one namespace, tcpdump in another, tshark -x to print the bytes.
set -e
ip netns add kcapA; ip netns add kcapB
trap 'ip netns del kcapA; ip netns del kcapB' EXIT
ip -n kcapA link add eth0 type veth peer name eth0 netns kcapB
ip -n kcapA addr add 192.0.2.21/24 dev eth0; ip -n kcapA link set eth0 up; ip -n kcapA link set lo up
ip -n kcapB addr add 192.0.2.22/24 dev eth0; ip -n kcapB link set eth0 up
for v in 2 3; do
cat > /tmp/k$v.conf <<EOC
global_defs { router_id kcap }
vrrp_instance VI_1 {
  state MASTER
  interface eth0
  virtual_router_id 51
  priority 150
  advert_int 1
  version $v
  virtual_ipaddress {
    192.0.2.100/24
    192.0.2.101/24
  }
}
EOC
ip netns exec kcapB timeout 8 tcpdump -i eth0 -c 2 -w /tmp/k$v.pcap 'ip proto 112' >/dev/null 2>&1 &
sleep 0.5
ip netns exec kcapA keepalived --vrrp -n -l -f /tmp/k$v.conf -p /tmp/k$v.pid -r /tmp/k$v.vpid >/tmp/k$v.log 2>&1 &
KP=$!
wait %1 || true
kill $KP; wait $KP 2>/dev/null || true
tshark -r /tmp/k$v.pcap -c1 -x 2>/dev/null | head -8
tshark -r /tmp/k$v.pcap -c1 -V 2>/dev/null | sed -n '/Virtual Router Redundancy/,$p'
done
