#!/bin/sh
# Runs inside the Debian root (chroot, own pid and network namespaces): drives both
# packages through their /etc/init.d scripts and prints one "check NAME ok|fail DETAIL" line each.
agent=$(hostname | cut -d. -f1)-agentd

check() {  # check NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then echo "check $1 ok"; else echo "check $1 fail (expected $2, got $3)"; fi
}
state() {
    python3 -c "import json,sys,urllib.request as u
try: print(json.load(u.urlopen('http://127.0.0.1:8690/agents/$1', timeout=2))['state'])
except Exception as e: print('none')"
}
wait_state() {  # wait_state AGENT STATE
    for _ in $(seq 1 50); do [ "$(state "$1")" = "$2" ] && break; sleep 0.2; done
    state "$1"
}

/etc/init.d/hbdaemon status >/dev/null 2>&1; check daemon-status-before 3 $?
/etc/init.d/hbdaemon start; check daemon-start 0 $?
/etc/init.d/agentd start; check agent-start 0 $?
/etc/init.d/hbdaemon status >/dev/null; check daemon-status-running 0 $?
/etc/init.d/agentd status >/dev/null; check agent-status-running 0 $?
check agent-healthy healthy "$(wait_state "$agent" healthy)"
check daemon-user hbdaemon "$(ps -o user= -p "$(cat /run/hbdaemon/hbdaemon.pid)" 2>/dev/null || stat -c %U /proc/"$(cat /run/hbdaemon/hbdaemon.pid)")"
check socket-mode "srw-rw---- hbdaemon" "$(stat -c '%A %G' /run/hbdaemon/hbdaemon.sock)"
/etc/init.d/hbdaemon reload; check daemon-reload 0 $?
/etc/init.d/agentd reload; check agent-reload 0 $?
/etc/init.d/hbdaemon status >/dev/null; check daemon-alive-after-reload 0 $?
/etc/init.d/agentd stop; check agent-stop 0 $?
check agent-stopped stopped "$(wait_state "$agent" stopped)"
/etc/init.d/agentd status >/dev/null 2>&1; check agent-status-stopped 3 $?
/etc/init.d/agentd stop; check agent-stop-again 0 $?
/etc/init.d/hbdaemon stop; check daemon-stop 0 $?
test -e /run/hbdaemon/hbdaemon.sock; check socket-removed 1 $?
/etc/init.d/hbdaemon status >/dev/null 2>&1; check daemon-status-stopped 3 $?
grep -q "ready: unix socket" /var/log/hbdaemon/hbdaemon.log; check daemon-logged 0 $?
# an HBDAEMON_* override in /etc/default/hbdaemon reaches the daemon
cp /etc/default/hbdaemon /tmp/default.saved
echo "HBDAEMON_HTTP_PORT=8697" >> /etc/default/hbdaemon
/etc/init.d/hbdaemon start; check daemon-start-with-override 0 $?
check default-override-applied ok "$(python3 -c "import urllib.request as u
try: print('ok' if u.urlopen('http://127.0.0.1:8697/healthz', timeout=5).status == 200 else 'no')
except Exception as e: print(e)")"
/etc/init.d/hbdaemon stop; check daemon-stop-with-override 0 $?
cp /tmp/default.saved /etc/default/hbdaemon
# the init.d log is rotated by the packaged logrotate file; the daemon reopens it itself
/etc/init.d/hbdaemon start; check daemon-start-for-logrotate 0 $?
logrotate -f /etc/logrotate.d/hbdaemon; check logrotate-runs 0 $?
test -s /var/log/hbdaemon/hbdaemon.log.1; check log-rotated 0 $?
/etc/init.d/hbdaemon reload >/dev/null
for _ in $(seq 1 25); do grep -q "configuration reloaded" /var/log/hbdaemon/hbdaemon.log 2>/dev/null && break; sleep 0.2; done
grep -q "configuration reloaded" /var/log/hbdaemon/hbdaemon.log; check log-reopened-after-rotation 0 $?
check rotated-log-owner "hbdaemon 640" "$(stat -c '%U %a' /var/log/hbdaemon/hbdaemon.log)"
/etc/init.d/hbdaemon stop; check daemon-stop-after-logrotate 0 $?
# --check-config as root judges a log path for the user the service runs as
out=$(HBDAEMON_LOG_FILE=/root/hb.log hbdaemon --check-config 2>&1); rc=$?
check check-config-unwritable-log 2 $rc
case "$out" in *"not writable by user hbdaemon"*) r=ok;; *) r="$out";; esac
check check-config-names-the-user ok "$r"
out=$(AGENTD_LOG_FILE=/root/agentd.log agentd --check-config 2>&1); rc=$?
check agentd-check-config-unwritable-log 2 $rc
echo "done"
