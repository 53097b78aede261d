"""The keys file for signed UDP heartbeats, as both programs read it."""

import os

import pytest

from hbdaemon.keyfile import Key, KeysFileError, read_keys, read_one_key


def write(tmp_path, data: bytes) -> str:
    path = tmp_path / "keys"
    path.write_bytes(data)
    return str(path)


def test_lines_comments_and_globs(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf# fleet keys\r\nfleet 0123456789abcdef#0123 web-* db-?\r\n"
                           b"  central  another-secret-0001   # the central one\n\n")
    assert read_keys(path) == [Key("fleet", b"0123456789abcdef#0123", ("web-*", "db-?")),
                               Key("central", b"another-secret-0001", ())]
    assert read_keys(path)[0].covers("web-1") and not read_keys(path)[0].covers("api-1")


@pytest.mark.parametrize("data, needle", [
    (b"", "no keys"), (b"# only a comment\n", "no keys"),
    (b"k1 short\n", "shorter than 16"), (b"k1\n", "line 1"),
    (b"cl\xc3\xa9 0123456789abcdef0\n", "line 1"),
    (b"k1 0123456789abcdef0\nk1 0123456789abcdef1\n", "given twice"),
    (b"k1 0123456789abcdef\xff\n", "not UTF-8"),
])
def test_what_is_refused_names_the_line(tmp_path, data, needle):
    with pytest.raises(KeysFileError) as err:
        read_keys(write(tmp_path, data))
    assert needle in str(err.value)


def test_only_a_newline_ends_a_line(tmp_path):
    [key] = read_keys(write(tmp_path, "k1 0123456789abcdef0\x0bweb-*\u2028db-*\n".encode()))
    assert key.id == "k1" and key.globs == ("web-*", "db-*")  # one line; blanks between


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(KeysFileError) as err:
        read_keys(str(tmp_path / "fifo"))
    assert "regular file" in str(err.value)


def test_a_senders_file_holds_exactly_one_key_without_globs(tmp_path):
    assert read_one_key(write(tmp_path, b"k1 0123456789abcdef0\n")).id == "k1"
    for data in (b"k1 0123456789abcdef0\nk2 0123456789abcdef0\n", b"k1 0123456789abcdef0 web-*\n"):
        with pytest.raises(KeysFileError):
            read_one_key(write(tmp_path, data))
