#!/bin/sh
# Runs inside the booted Debian root (systemd-nspawn -b) as a oneshot unit after
# multi-user.target: drives both packages through systemctl, prints one
# "check NAME ok|fail DETAIL" line each, then powers the container off.
agent=$(hostname | cut -d. -f1)-agentd

check() {
    if [ "$2" = "$3" ]; then echo "check $1 ok"; else echo "check $1 fail (expected $2, got $3)"; fi
}
field() {
    python3 -c "import json,urllib.request as u
try: print(json.load(u.urlopen('http://127.0.0.1:8690/agents/$1', timeout=2))['$2'])
except Exception: print('none')"
}
state() {
    field "$1" state
}
wait_state() {
    for _ in $(seq 1 50); do [ "$(state "$1")" = "$2" ] && break; sleep 0.2; done
    state "$1"
}
user_of() {  # the main process's user, once systemd has set it (a fork is root at first)
    for _ in $(seq 1 25); do
        user=$(ps -o user= -p "$(systemctl show -P MainPID "$1")")
        [ "$user" != root ] && break
        sleep 0.2
    done
    echo "$user"
}

check daemon-active active "$(systemctl is-active hbdaemon)"
check agent-active active "$(systemctl is-active agentd)"
check daemon-ready "receiving heartbeats" "$(systemctl show -P StatusText hbdaemon)"
check daemon-user hbdaemon "$(user_of hbdaemon)"
check agent-user agentd "$(user_of agentd)"
check daemon-restarts 0 "$(systemctl show -P NRestarts hbdaemon)"
check agent-restarts 0 "$(systemctl show -P NRestarts agentd)"
check agent-healthy healthy "$(wait_state "$agent" healthy)"
# SO_PEERCRED must name the agent's real user under the hardened unit (no PrivateUsers=)
check agent-peer-uid "$(id -u agentd)" "$(field "$agent" peer_uid)"
hbctl status >/dev/null; check hbctl-status 0 $?
hbctl check "$agent" >/dev/null; check hbctl-check-ok 0 $?
check socket "srw-rw---- hbdaemon" "$(stat -c '%A %G' /run/hbdaemon/hbdaemon.sock)"
systemctl reload hbdaemon; check daemon-reload 0 $?
systemctl reload agentd; check agent-reload 0 $?
sleep 0.5
check daemon-active-after-reload active "$(systemctl is-active hbdaemon)"
check daemon-logged-reload 1 "$(journalctl -u hbdaemon -q --no-pager | grep -c 'configuration reloaded')"
systemctl stop agentd; check agent-stop 0 $?
check agent-stopped stopped "$(wait_state "$agent" stopped)"
systemctl stop hbdaemon; check daemon-stop 0 $?
test -e /run/hbdaemon/hbdaemon.sock; check socket-removed 1 $?
check daemon-inactive inactive "$(systemctl is-active hbdaemon)"
hbctl status >/dev/null 2>&1; check hbctl-status-down 3 $?
systemctl start agentd; check agent-starts-without-daemon 0 $?
sleep 1
check agent-runs-without-daemon active "$(systemctl is-active agentd)"
systemctl start hbdaemon; check daemon-start 0 $?
check agent-back healthy "$(wait_state "$agent" healthy)"
# log.file under the hardened units (ProtectSystem=strict): LogsDirectory= makes
# /var/log/<name> writable; without it the daemon exited 1 every 2 s
for name in hbdaemon agentd; do
    upper=$(echo "$name" | tr a-z A-Z)
    mkdir -p /etc/systemd/system/$name.service.d
    printf '[Service]\nEnvironment=%s_LOG_FILE=/var/log/%s/%s.log\n' "$upper" "$name" "$name" \
        > /etc/systemd/system/$name.service.d/log-file.conf
done
systemctl daemon-reload
systemctl restart hbdaemon; check daemon-restart-with-log-file 0 $?
systemctl restart agentd; check agent-restart-with-log-file 0 $?
daemon_pid=$(systemctl show -P MainPID hbdaemon); agent_pid=$(systemctl show -P MainPID agentd)
check agent-healthy-with-log-file healthy "$(wait_state "$agent" healthy)"
sleep 3  # RestartSec=2s: a unit that cannot write its log would have been restarted by now
check daemon-same-process-with-log-file "$daemon_pid" "$(systemctl show -P MainPID hbdaemon)"
check agent-same-process-with-log-file "$agent_pid" "$(systemctl show -P MainPID agentd)"
grep -q "ready: unix socket" /var/log/hbdaemon/hbdaemon.log; check daemon-log-file-written 0 $?
grep -q "heartbeats every" /var/log/agentd/agentd.log; check agent-log-file-written 0 $?
check log-dir-owner "hbdaemon agentd" "$(stat -c %U /var/log/hbdaemon) $(stat -c %U /var/log/agentd)"
rm -r /etc/systemd/system/hbdaemon.service.d /etc/systemd/system/agentd.service.d
systemctl daemon-reload
# the booted exposure figures quoted in README
for name in hbdaemon agentd; do
    level=$(systemd-analyze security "$name.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    echo "exposure $name $level"
    check "$name-exposure-at-most-2" yes "$(python3 -c "print('yes' if 0 < float('${level:-0}') <= 2.0 else 'no')")"
done
# agentd watching a real service by its unit: MainPID, a restart, a stop
cat > /etc/systemd/system/hb-demo.service <<'UNIT'
[Unit]
Description=a tiny HTTP server for the watch test
[Service]
ExecStart=/usr/bin/python3 -m http.server 8099 --bind 127.0.0.1
UNIT
systemctl daemon-reload
systemctl start hb-demo; check demo-start 0 $?
# a hook restarts it when it is dead: the unprivileged daemon may, for the units listed
sed -i 's|^var HBDAEMON_RESTARTABLE = \[|&"hb-demo.service",|' /etc/polkit-1/rules.d/50-hbdaemon.rules
systemctl try-reload-or-restart polkit 2>/dev/null
cp /etc/default/hbdaemon /tmp/default.hb.saved
echo "HBDAEMON_HOOKS='[{on: [dead], agents: [demo], command: [systemctl, restart, --no-block, hb-demo.service]}]'" >> /etc/default/hbdaemon
systemctl restart hbdaemon; check daemon-restart-with-hook 0 $?
cp /etc/agentd/agentd.yaml /tmp/agentd.yaml.saved
# the shipped file has `watch: []`: an operator edits that key (a second one is refused)
sed -i 's|^watch: \[\]$|watch:\n  - {agent_id: demo, unit: hb-demo.service}|' /etc/agentd/agentd.yaml
agentd --check-config >/dev/null; check agent-config-with-watch 0 $?
systemctl restart agentd; check agent-restart-with-watch 0 $?
check demo-healthy healthy "$(wait_state demo healthy)"
check demo-pid "$(systemctl show -P MainPID hb-demo)" "$(field demo pid)"
check demo-connected True "$(field demo connected)"
old_pid=$(field demo pid)
began=$(date +%s%N)
systemctl restart hb-demo; check demo-restart 0 $?
new_pid=$(systemctl show -P MainPID hb-demo)
for _ in $(seq 1 500); do [ "$(field demo pid)" = "$new_pid" ] && [ "$(state demo)" = healthy ] && break; sleep 0.02; done
echo "timing restart-to-healthy-ms $(( ($(date +%s%N) - began) / 1000000 ))"  # printed by the test
check demo-new-pid-after-restart "$new_pid" "$(field demo pid)"
check demo-healthy-after-restart healthy "$(state demo)"
check demo-restart-seen yes "$(python3 -c "import json,urllib.request as u
ev=json.load(u.urlopen('http://127.0.0.1:8690/events?agent=demo', timeout=5))['events']
print('yes' if [e['to'] for e in ev][-2:] in (['stopped','healthy'], ['dead','healthy']) else ev)")"
kill -9 "$new_pid"
for _ in $(seq 1 75); do
    p=$(field demo pid); [ "$p" != "$new_pid" ] && [ "$(state demo)" = healthy ] && break; sleep 0.2
done
check demo-restarted-by-hook healthy "$(state demo)"
check demo-hook-new-pid "$(systemctl show -P MainPID hb-demo)" "$(field demo pid)"
check demo-hook-dead-seen yes "$(python3 -c "import json,urllib.request as u
ev=json.load(u.urlopen('http://127.0.0.1:8690/events?agent=demo', timeout=5))['events']
print('yes' if any(e['to'] == 'dead' and 'signal 9' in e['reason'] or 'exited' in e['reason'] for e in ev) else ev)")"
check demo-hook-logged yes "$(journalctl -u hbdaemon -q --no-pager | grep -q 'hook systemctl for demo (dead) ran' && echo yes)"
# a unit not listed: refused
systemctl stop hb-demo
check hook-cannot-touch-others yes "$(runuser -u hbdaemon -- systemctl restart --no-block agentd.service 2>/dev/null || echo yes)"
cp /tmp/default.hb.saved /etc/default/hbdaemon
systemctl restart hbdaemon
cp /tmp/agentd.yaml.saved /etc/agentd/agentd.yaml
systemctl restart agentd
# agentd run under systemd: Restart=on-failure sees the child's status, the daemon the code
cat > /etc/systemd/system/hb-job.service <<'UNIT'
[Unit]
Description=a job that fails, run by agentd run
[Service]
ExecStart=/usr/bin/agentd run --agent-id billing -- /bin/sh -c 'sleep 1; exit 3'
Restart=on-failure
RestartSec=1
UNIT
systemctl daemon-reload
systemctl start hb-job; check job-start 0 $?
check job-dead dead "$(wait_state billing dead)"
check job-reason "process" "$(field billing reason | sed -n 's/^\(process\) [0-9]* exited with code 3$/\1/p')"
for _ in $(seq 1 50); do [ "$(systemctl show -P NRestarts hb-job)" -ge 1 ] && break; sleep 0.2; done
check job-restarted-by-systemd yes "$( [ "$(systemctl show -P NRestarts hb-job)" -ge 1 ] && echo yes)"
check job-logged-code-3 yes "$(journalctl -u hb-job -q --no-pager | grep -q 'status=3' && echo yes)"
systemctl stop hb-job
journalctl -u hbdaemon -u agentd -q --no-pager | tail -60 | sed 's/^/journal: /'  # for a failure
echo done
