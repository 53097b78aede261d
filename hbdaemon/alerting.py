"""Alerting: each event to Alertmanager (as alerts) and to the webhooks (as events).

An event listener on the event thread: it decides and queues, the senders' own threads
deliver. What a webhook is told is what an on-call engineer wants paged about: an
agent starting to fail (or failing another way), and its recovery; not an agent seen
again after a daemon restart, nor one that stopped on purpose without having failed.
"""

import logging
import threading
from typing import Callable, Dict, List, Optional, Tuple

from hbdaemon.alerts import AlertBook, AlertChange, AlertmanagerSender, Delivery
from hbdaemon.config import EVENT_KINDS, FAILING_STATES, Config, ConfigError
from hbdaemon.events import Event
from hbdaemon.threads import Component
from hbdaemon.webhooks import WebhookSender, payload

log = logging.getLogger(__name__)

Silenced = Callable[[str, str], Optional[str]]  # (agent_id, state) -> a silence's id or None


def read_secrets(cfg: Config) -> List[Optional[bytes]]:
    """Each webhook's secret (None: unsigned). Raises ConfigError naming the webhook."""
    secrets = []
    for n, hook in enumerate(cfg.webhooks):
        if not hook.secret_file:
            secrets.append(None)
            continue
        try:
            with open(hook.secret_file, "rb") as f:
                secret = f.read(65536).strip()
        except OSError as exc:
            raise ConfigError(f"{cfg.source}: webhooks[{n}].secret_file: cannot read "
                              f"{hook.secret_file}: {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"{cfg.source}: webhooks[{n}].secret_file: {hook.secret_file} "
                              "is empty")
        secrets.append(secret)
    return secrets


def news(ev: Event, change: AlertChange) -> Optional[str]:
    """Whether a webhook hears of `ev` ("firing", "resolved", "event"), or None."""
    if ev.kind in EVENT_KINDS:
        return "event"
    if ev.kind == "forgotten":  # forgotten while failing: its alert ends
        return "resolved" if change.resolved is not None else None
    if ev.kind != "state":
        return None
    if ev.to_state in FAILING_STATES:
        return "firing" if change.fired is not None else None
    if ev.to_state in ("healthy", "stopped"):
        return "resolved" if change.resolved is not None else None
    return "event"  # unknown: only for a webhook that asked for it by name


class Alerting:
    """The alert book, the Alertmanager senders and the webhooks. on_event is thread-safe
    and returns at once."""

    def __init__(self, cfg: Config, secrets: List[Optional[bytes]], instance: str,
                 page_url: str, lookup: Callable[[str], Optional[dict]],
                 silenced: Silenced = lambda agent_id, state: None,
                 daemon_role: Callable[[str], object] = lambda agent_id: False):
        self.book = AlertBook()
        self.instance, self.page_url = instance, page_url
        self._lookup, self._silenced, self._daemon_role = lookup, silenced, daemon_role
        self.senders: List[AlertmanagerSender] = []
        self.webhooks: List[WebhookSender] = []
        self._retired: List[Tuple[str, Dict[int, Optional[bytes]]]] = []  # queues to delete
        self._retired_lock = threading.Lock()  # configure() adds, the store's writer takes
        self._started = False
        self.configure(cfg, secrets)

    def configure(self, cfg: Config, secrets: List[Optional[bytes]]) -> None:
        """(Re)build the senders (SIGHUP); one whose settings did not change keeps running
        with what it had queued, one removed stops, what a changed one had queued moves on."""
        old_senders = {(s.url, s.cfg): s for s in self.senders}
        old_hooks = {(w.cfg, w.secret): w for w in self.webhooks}
        senders, hooks = [], []
        for url in cfg.alertmanager.urls:
            kept = old_senders.pop((url.rstrip("/") + "/api/v2/alerts", cfg.alertmanager), None)
            senders.append(kept or AlertmanagerSender(url, cfg.alertmanager, self.book,
                                                      self.instance, self.page_url))
        keys: Dict[str, int] = {}
        for hook, secret in zip(cfg.webhooks, secrets):
            kept = old_hooks.pop((hook, secret), None)
            hooks.append(kept or WebhookSender(hook, secret))
            base = hooks[-1].base_key  # the same URL and name twice: each its own queue
            keys[base] = keys.get(base, 0) + 1
            hooks[-1].key = base if keys[base] == 1 else f"{base}#{keys[base]}"
        by_url = {s.url: s for s in senders}
        for sender in old_senders.values():
            sender.stop(1.0)
            if sender.url in by_url:
                by_url[sender.url].take_over(sender)
        for hook in old_hooks.values():
            hook.stop(1.0)
            for new in hooks:
                if new.cfg.url == hook.cfg.url and new is not hook:
                    new.take_over(hook)
                    break
            with self._retired_lock:
                self._retired.append((hook.key, hook.retire()))
        self.senders, self.webhooks = senders, hooks
        if self._started:
            self.start()

    def take_dirty(self) -> List[Tuple[str, int, Optional[bytes]]]:
        """(webhook key, seq, body to keep or None to delete) for each queued webhook event
        changed since the last call: the store's writer persists them with the events."""
        with self._retired_lock:
            retired, self._retired = self._retired, []
        out = [(key, seq, body) for key, dirty in retired for seq, body in dirty.items()]
        for hook in self.webhooks:
            out.extend((hook.key, seq, body) for seq, body in hook.take_dirty().items())
        return out

    def restore(self, rows: List[Tuple[str, int, bytes]]) -> int:
        """Webhook events that waited before the restart, back in their queues; those of a
        webhook no longer configured are dropped (logged). Returns how many wait."""
        by_key = {hook.key: hook for hook in self.webhooks}
        waiting: Dict[str, List[Tuple[int, bytes]]] = {}
        for key, seq, body in rows:
            waiting.setdefault(key, []).append((seq, body))
        restored = 0
        for key, items in waiting.items():
            hook = by_key.get(key)
            if hook is None:
                log.warning("webhooks: dropping %d events that waited for a webhook no longer "
                            "configured (%s)", len(items), key[:200])
                with self._retired_lock:
                    self._retired.append((key, {seq: None for seq, _ in items}))
                continue
            hook.restore(items)
            restored += len(items)
        if restored:
            log.info("webhooks: %d events waiting from before the restart", restored)
        return restored

    def rebuild(self, rows) -> None:
        """The firing alerts from the registry (at start, before the first event)."""
        n = self.book.rebuild(rows)
        if n and self.senders:
            log.info("alerting: %d alerts firing since before the restart", n)

    def start(self) -> None:
        self._started = True
        for part in self.senders + self.webhooks:
            if part.component is None:
                part.start()

    def stop(self, timeout: float) -> None:
        for part in self.senders + self.webhooks:
            part.stop(timeout)

    @property
    def components(self) -> List[Optional[Component]]:
        return [part.component for part in self.senders + self.webhooks]

    @property
    def deliveries(self) -> List[Delivery]:
        return [part.delivery for part in self.senders + self.webhooks]

    def on_event(self, ev: Event) -> None:
        change = self.book.apply(ev, self._daemon_role)
        if change:
            for sender in self.senders:
                sender.offer(change.alerts)
        kind = news(ev, change)
        if kind is None or not self.webhooks:
            return
        # a forgotten agent's alert ends for the webhooks that heard it fire: those of the
        # alert's state (after a restart the record's own state is `unknown`)
        state = change.resolved.state if ev.kind == "forgotten" else ev.to_state
        trigger = state if ev.kind in ("state", "forgotten") else ev.kind
        chosen = [w for w in self.webhooks if trigger in w.cfg.on and w.cfg.covers(ev.agent_id)]
        if not chosen:
            return
        if self._silenced(ev.agent_id, state):
            for hook in chosen:
                hook.delivery.silenced += 1
            return
        alert = kind if kind in ("firing", "resolved") else None
        body = payload(ev.to_dict(), self._lookup(ev.agent_id), alert, self.instance)
        for hook in chosen:
            hook.offer(body)

    def report(self) -> Dict[str, object]:
        return {"firing": len(self.book), "receivers": [d.report() for d in self.deliveries]}

