"""The wire protocol parser: what it accepts, what it rejects, and that it never crashes."""

import json
import math

import pytest
from hypothesis import assume, given, settings, strategies as st

from hbdaemon.protocol import (MAX_MESSAGE_BYTES, ProtocolError, anonymous_id, format_rfc3339,
                               parse_heartbeat, parse_rfc3339, valid_agent_id)

GO_LINE = (b'{"pid":29512,"timestamp":"2026-11-27T20:35:24.456284565Z","version":"go-1.0.0",'
           b'"status":"running","cpu":0,"memory":4980736}\n')


def test_go_agent_line_is_accepted_on_unix_and_left_for_the_receiver_to_name():
    hb = parse_heartbeat(GO_LINE, require_agent_id=False)
    assert hb.agent_id is None
    assert (hb.pid, hb.version, hb.status, hb.cpu, hb.memory) == (29512, "go-1.0.0", "running", 0.0, 4980736)
    assert parse_rfc3339(hb.timestamp) == pytest.approx(parse_rfc3339("2026-11-27T20:35:24.456284Z"))


def test_an_anonymous_agent_is_named_by_its_program_and_uid_in_id_characters():
    assert anonymous_id("heartbeat-agent", 1000, 42) == "heartbeat-agent@uid1000"
    assert anonymous_id(None, 0, 42) == "pid-42"  # program unknown (gone already)
    hostile = anonymous_id("x y/\u00e9\n" + "z" * 300, 7, 1)
    assert valid_agent_id(hostile) and hostile.startswith("x_y__") and hostile.endswith("@uid7")


@given(st.text(min_size=1, max_size=500), st.integers(0, 2**32 - 1))
@settings(max_examples=300, deadline=None)
def test_any_program_name_gives_a_valid_id_ending_in_its_uid(program, uid):
    agent_id = anonymous_id(program, uid, 1)
    assert valid_agent_id(agent_id) and agent_id.endswith(f"@uid{uid}")


def test_http_requires_agent_id():
    with pytest.raises(ProtocolError) as err:
        parse_heartbeat(GO_LINE, require_agent_id=True)
    assert err.value.field == "agent_id"


def test_defaults_for_optional_fields():
    hb = parse_heartbeat(b'{"agent_id":"a","pid":1}')
    assert (hb.status, hb.cpu, hb.memory, hb.version, hb.timestamp) == ("running", 0.0, 0, "", None)


def test_a_downstream_daemons_summary_is_kept():
    hb = parse_heartbeat(b'{"agent_id":"host-b","pid":1,"summary":{"healthy":3,"dead":1}}')
    assert hb.summary == {"healthy": 3, "dead": 1}


def test_unknown_fields_are_ignored():
    assert parse_heartbeat(b'{"agent_id":"a","pid":1,"future":[1,2]}').agent_id == "a"


def test_unparsable_timestamp_is_not_an_error():
    hb = parse_heartbeat(b'{"agent_id":"a","pid":1,"timestamp":"yesterday"}')
    assert parse_rfc3339(hb.timestamp) is None
    assert parse_heartbeat(b'{"agent_id":"a","pid":1,"timestamp":12}').timestamp is None


@pytest.mark.parametrize("doc,field", [
    ({"agent_id": "a"}, "pid"),
    ({"agent_id": "a", "pid": 0}, "pid"),
    ({"agent_id": "a", "pid": -3}, "pid"),
    ({"agent_id": "a", "pid": "12"}, "pid"),
    ({"agent_id": "a", "pid": True}, "pid"),
    ({"agent_id": "a", "pid": 2**40}, "pid"),
    ({"agent_id": "", "pid": 1}, "agent_id"),
    ({"agent_id": "a b", "pid": 1}, "agent_id"),
    ({"agent_id": "x" * 129, "pid": 1}, "agent_id"),
    ({"agent_id": 5, "pid": 1}, "agent_id"),
])
def test_bad_identity_voids_the_heartbeat_naming_the_field(doc, field):
    with pytest.raises(ProtocolError) as err:
        parse_heartbeat(json.dumps(doc).encode())
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'"x"', b"\xff\xfe",
                                 b'{"pid": 1e999999}', b"[" * 100000, b"1" * 5000])
def test_garbage_is_a_clean_rejection(raw):
    with pytest.raises(ProtocolError):
        parse_heartbeat(raw)


@pytest.mark.parametrize("doc,kept", [
    ({"cpu": -1}, ("cpu", None)),
    ({"cpu": "5"}, ("cpu", None)),
    ({"cpu": True}, ("cpu", None)),
    ({"memory": -1}, ("memory", None)),
    ({"memory": 1.5}, ("memory", None)),
    ({"version": "v" * 65}, ("version", "")),
    ({"status": 7}, ("status", "running")),
    ({"status": "s" * 33}, ("status", "running")),
    ({"summary": {"healthy": -1}}, ("summary", None)),
    ({"summary": [1]}, ("summary", None)),
    ({"summary": "x"}, ("summary", None)),
    ({"summary": {str(i): 1 for i in range(17)}}, ("summary", None)),
])
def test_a_bad_optional_field_is_dropped_with_a_warning_not_the_heartbeat(doc, kept):
    hb = parse_heartbeat(json.dumps({"agent_id": "a", "pid": 7, **doc}).encode())
    field, value = kept
    assert (hb.agent_id, hb.pid, getattr(hb, field)) == ("a", 7, value)
    assert len(hb.warnings) == 1 and hb.warnings[0].startswith(field + ":")


def test_per_core_cpu_over_100_is_clamped_and_still_proves_liveness():
    hb = parse_heartbeat(b'{"pid":29512,"status":"stopping","cpu":133.7}', require_agent_id=False)
    assert (hb.status, hb.cpu) == ("stopping", 100.0)
    assert hb.warnings == ("cpu: 133.7 is over 100 (percent of the machine); clamped to 100",)


def test_an_integer_of_hundreds_of_digits_voids_only_its_field():
    hb = parse_heartbeat(b'{"agent_id":"a","pid":1,"cpu":1' + b"0" * 309 + b',"memory":'
                         + b"9" * 400 + b"}")
    assert (hb.cpu, hb.memory, len(hb.warnings)) == (None, None, 2)
    with pytest.raises(ProtocolError) as err:
        parse_heartbeat(b'{"agent_id":"a","pid":1' + b"0" * 400 + b"}")
    assert err.value.field == "pid"


def test_nan_and_infinity_literals_are_not_json():
    for text in (b'{"agent_id":"a","pid":1,"cpu":NaN}', b'{"agent_id":"a","pid":1,"cpu":Infinity}',
                 b'{"agent_id":"a","pid":1,"cpu":-Infinity}'):
        with pytest.raises(ProtocolError) as err:
            parse_heartbeat(text)
        assert err.value.field is None


def test_lone_surrogates_in_text_fields_are_dropped():
    hb = parse_heartbeat(b'{"agent_id":"a","pid":1,"version":"\\ud800x","status":"\\udfff"}')
    assert (hb.version, hb.status, len(hb.warnings)) == ("", "running", 2)


def test_oversized_message_is_rejected():
    big = b'{"agent_id":"a","pid":1,"pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(ProtocolError) as err:
        parse_heartbeat(big)
    assert "larger" in str(err.value)


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27T20:35:24Z", 1795811724.0),
    ("2026-11-27T20:35:24.5Z", 1795811724.5),
    ("2026-11-27T21:35:24+01:00", 1795811724.0),
    ("2026-11-27t20:35:24z", 1795811724.0),
])
def test_rfc3339_forms(text, expected):
    assert parse_rfc3339(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["2026-13-01T00:00:00Z", "2026-11-27", "20:35:24Z", "2026-11-27T25:00:00Z"])
def test_rfc3339_rejects(text):
    assert parse_rfc3339(text) is None


def test_format_rfc3339_round_trips_to_the_millisecond():
    assert format_rfc3339(1795811724.4567) == "2026-11-27T20:35:24.457Z"
    assert format_rfc3339(1795811724.9999) == "2026-11-27T20:35:25.000Z"
    assert parse_rfc3339(format_rfc3339(1795811724.25)) == 1795811724.25


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
heartbeat_like = st.fixed_dictionaries({}, optional={
    "agent_id": st.one_of(st.text(max_size=130), json_values),
    "pid": st.one_of(st.integers(), json_values),
    "timestamp": st.one_of(st.text(max_size=40), json_values),
    "version": st.one_of(st.text(max_size=70), json_values),
    "status": st.one_of(st.sampled_from(["starting", "running", "stopping"]), json_values),
    "cpu": st.one_of(st.floats(), st.integers(), json_values),
    "memory": st.one_of(st.integers(), json_values),
    "agent_pid": st.one_of(st.integers(), json_values),
    "exit_code": st.one_of(st.integers(), json_values),
    "signal": st.one_of(st.integers(), json_values),
    "detail": json_values,
    "watcher": json_values,
    "summary": json_values,
    "problems_total": st.one_of(st.integers(), json_values),
})
# a downstream daemon's lists, each entry any mix of good and hostile fields
relayed_entry = st.fixed_dictionaries({}, optional={
    name: st.one_of(good, json_values) for name, good in (
        ("agent_id", st.sampled_from(["db-1", "a:b"])),
        ("to", st.sampled_from(["dead", "healthy", "forgotten"])),
        ("state", st.sampled_from(["dead", "no_heartbeat"])),
        ("reason", st.text(max_size=10)),
        ("time", st.just("2026-11-28T10:00:00Z")), ("since", st.just("2026-11-28T10:00:00Z")))})


def _parse_cleanly(data, require):
    try:
        hb = parse_heartbeat(data, require_agent_id=require)
    except ProtocolError as exc:
        assert isinstance(exc.reason, str)
        return None
    assert 0 < hb.pid and (valid_agent_id(hb.agent_id) or (hb.agent_id is None and not require))
    assert hb.cpu is None or (0 <= hb.cpu <= 100 and math.isfinite(hb.cpu))
    assert hb.memory is None or 0 <= hb.memory < 2**63
    for text in (hb.version, hb.status):
        text.encode("utf-8")  # no lone surrogates reach the log or the store
    return hb


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_never_raise_anything_else(data, require):
    _parse_cleanly(data, require)


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans())
def test_arbitrary_json_never_raises_anything_else(value, require):
    _parse_cleanly(json.dumps(value).encode(), require)


@settings(max_examples=400, deadline=None)
@given(heartbeat_like, st.booleans())
def test_heartbeat_shaped_json_never_raises_anything_else(doc, require):
    _parse_cleanly(json.dumps(doc).encode(), require)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(relayed_entry, json_values), max_size=3),
       st.lists(st.one_of(relayed_entry, json_values), max_size=3))
def test_a_reports_relayed_lists_never_raise_anything_else(events, problems):
    """Found by a review: a list or object as an entry's state raised TypeError (an
    unhashable value tested against a set) and took the heartbeat with it."""
    try:  # NaN and infinities are not JSON: the whole line would be refused, rightly
        line = json.dumps({"agent_id": "host-1", "pid": 5, "summary": {}, "events": events,
                           "problems": problems}, allow_nan=False).encode()
    except ValueError:
        assume(False)
    hb = _parse_cleanly(line, True)
    assert hb is not None and hb.agent_id == "host-1"  # liveness, whatever the lists hold


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-99:99",
                                  "9999-12-31T23:59:59-01:00", "2026-11-27T20:35:24+24:00"])
def test_rfc3339_times_outside_what_it_can_show_are_none(text):
    assert parse_rfc3339(text) is None


def test_a_watchers_fields_identity_voids_and_exit_details_are_dropped_with_a_warning():
    hb = parse_heartbeat(b'{"agent_id":"nginx","pid":5,"agent_pid":7,"status":"exited",'
                         b'"exit_code":3,"detail":"pidfile /run/nginx.pid"}')
    assert (hb.agent_pid, hb.status, hb.exit_code, hb.signal) == (7, "exited", 3, None)
    for bad in (b'0', b'-1', b'"7"', b'1.5', b'true', b'4294967296'):
        with pytest.raises(ProtocolError) as err:
            parse_heartbeat(b'{"agent_id":"n","pid":5,"agent_pid":' + bad + b'}')
        assert err.value.field == "agent_pid"
    hb = parse_heartbeat(b'{"agent_id":"n","pid":5,"status":"exited","exit_code":256,'
                         b'"signal":"KILL","detail":' + json.dumps("x" * 201).encode() + b'}')
    assert (hb.exit_code, hb.signal, hb.detail) == (None, None, "") and len(hb.warnings) == 3
